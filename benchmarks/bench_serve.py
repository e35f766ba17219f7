"""``llmforge serve`` vs ``llmforge generate``: tokens/s of one streamed request, and of 4 clients.

    python benchmarks/bench_serve.py                    # hidden 256, 4 layers; 128 new tokens
    python benchmarks/bench_serve.py --new 64 --rounds 5

The model is a random Qwen2 of the benchmarks' ``small`` shape (hidden 256, 4 layers, 4 heads,
2 KV heads, intermediate 1024) with the tests' tiny byte-level BPE tokenizer (384 tokens, so
the model's vocabulary is 384, not Qwen's 151,936: a step costs ~ms, which exposes the
server's per-token overhead instead of hiding it behind the LM head). It is imported into a
temporary workspace as ``bench``.

* ``generate``: the loop ``llmforge generate --prompt`` runs (``stream_ids`` + ``iter_text``,
  each piece written and flushed), in this process, greedy; the model load is not timed.
* ``serve``: ``llmforge serve bench`` in a subprocess; this process streams the same
  prompt with the ``openai`` client (``temperature=0``), timed from the request to the last
  chunk (HTTP, SSE, JSON and the client's parsing included).

The two alternate round by round (the first round warms up and is dropped); the medians are
printed, with the ratio serve/generate (goal >= 0.95x) and the check that the text is the same.
Then 4 clients stream 4 different prompts at once: total completion tokens per second of wall
time, against the same 4 requests made one after another (requests to one model are generated
one at a time, so about 1x is expected; HTTP and the clients' parsing overlap the generation).
CPU time per token (server process; the client apart) is printed too: on a loaded machine the
wall-clock rates swing by 2x from round to round, CPU time much less.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # what llmforge's CLI sets before torch

import argparse
import io
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
PROMPTS = [
    "The quick brown fox jumps over the lazy dog. Language models predict the next token",
    "Fine-tuning adapts a pretrained model to a new task with a little data, and then",
    "def add(a, b):\n    return a + b\n\ndef mul(a, b):\n",
    "Qwen is a family of open language models; llmforge trains them locally on",
]


def build_workspace(root: Path) -> Path:
    """A workspace with the benchmark model imported as ``bench``."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM
    from typer.testing import CliRunner

    from llmforge.cli import app
    from tiny_models import README, build_tokenizer

    repo = root / "repo"
    repo.mkdir(parents=True)
    vocab = build_tokenizer(repo)
    cfg = Qwen2Config(
        hidden_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=1024,
        vocab_size=vocab,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=0,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    Qwen2ForCausalLM(cfg).save_pretrained(repo, safe_serialization=True)
    GenerationConfig(eos_token_id=0, pad_token_id=0).save_pretrained(repo)
    (repo / "README.md").write_text(README, encoding="utf-8")
    ws = root / "ws"
    ws.mkdir()
    args = ["--home", str(ws), "models", "import", str(repo), "--name", "bench", "--accept-license"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    return ws


def run_generate(adapter, prompt: str, new: int) -> tuple[float, int, str]:
    """``llmforge generate``'s loop: (seconds, tokens, text)."""
    from llmforge.inference.generation import SamplingOptions, iter_text, stream_ids

    opts = SamplingOptions(max_new_tokens=new, temperature=0.0)
    tok, sink, count = adapter.tokenizer, io.StringIO(), 0

    def counted():
        nonlocal count
        for i in stream_ids(adapter, tok.encode(prompt), opts):
            count += 1
            yield i

    t0 = time.perf_counter()
    for piece in iter_text(tok, counted()):
        sink.write(piece)
        sink.flush()
    return time.perf_counter() - t0, count, sink.getvalue()


def run_stream(client, prompt: str, new: int) -> tuple[float, int, str, float]:
    """One streamed request: (seconds, tokens, text, seconds to the first text)."""
    t0 = time.perf_counter()
    first, parts, tokens = 0.0, [], 0
    stream = client.completions.create(
        model="bench",
        prompt=prompt,
        max_tokens=new,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
        for c in chunk.choices:
            if c.text and not first:
                first = time.perf_counter() - t0
            parts.append(c.text)
    return time.perf_counter() - t0, tokens, "".join(parts), first


def start_server(ws: Path, device: str) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "llmforge", "--home", str(ws), "serve", "bench"]
    proc = subprocess.Popen(
        [*cmd, "--port", "0", "--device", device],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    line = proc.stdout.readline()
    url = line.split(" at ", 1)[1].split(" ", 1)[0]
    return proc, url


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(adapter, client, server_pid: int, new: int, rounds: int) -> dict[str, list]:
    """Alternating rounds (ABBA order, the first dropped): wall rates and CPU per token."""
    out: dict[str, list] = {"gen": [], "srv": [], "ratio": [], "gen_cpu": [], "srv_cpu": []}
    out["client_cpu"] = []
    for i in range(rounds + 1):
        got = {}
        for which in ("gen", "srv") if i % 2 else ("srv", "gen"):
            c0, s0 = time.process_time(), cpu_seconds(server_pid)
            if which == "gen":
                t, n, text = run_generate(adapter, PROMPTS[0], new)
                first = None
            else:
                t, n, text, first = run_stream(client, PROMPTS[0], new)
            here, there = time.process_time() - c0, cpu_seconds(server_pid) - s0
            cpu = here if which == "gen" else there
            got[which] = (n / t, cpu / max(n, 1), text, n, first, here / max(n, 1))
        if i:
            out["gen"].append(got["gen"])
            out["srv"].append(got["srv"])
            out["ratio"].append(got["srv"][0] / got["gen"][0])
            out["gen_cpu"].append(got["gen"][1])
            out["srv_cpu"].append(got["srv"][1])
            out["client_cpu"].append(got["srv"][5])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--new", type=int, default=128, help="new tokens per request")
    ap.add_argument("--rounds", type=int, default=9, help="measured rounds")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (both sides)")
    args = ap.parse_args()
    import openai
    import torch

    from llmforge.inference.model_source import load_for_inference
    from llmforge.workspace import Workspace

    with tempfile.TemporaryDirectory() as tmp:
        ws = build_workspace(Path(tmp))
        adapter, _ = load_for_inference(Workspace(root=ws), "bench", device=args.device)
        proc, url = start_server(ws, args.device)
        try:
            client = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=300)
            m = measure(adapter, client, proc.pid, args.new, args.rounds)
            m["together"], m["one_by_one"] = [], []
            for i in range(3):  # the 4 prompts at once vs one after another, alternating
                for key in ("together", "one_by_one") if i % 2 else ("one_by_one", "together"):
                    m[key].append(four_clients(client, args.new, key == "together"))
        finally:
            proc.terminate()
            proc.wait(30)
    report(adapter, m, args, torch.get_num_threads())


def four_clients(client, new: int, together: bool) -> float:
    """Total completion tokens per second of 4 streamed requests, concurrent or in turn."""
    t0 = time.perf_counter()
    if together:
        with ThreadPoolExecutor(4) as pool:
            runs = list(pool.map(lambda p: run_stream(client, p, new), PROMPTS))
    else:
        runs = [run_stream(client, p, new) for p in PROMPTS]
    return sum(r[1] for r in runs) / (time.perf_counter() - t0)


def report(adapter, m, args, threads: int) -> None:
    """Print the results."""
    med = statistics.median
    gen, srv = m["gen"][-1], m["srv"][-1]
    same = gen[2] == srv[2] and gen[3] == srv[3]
    q = statistics.quantiles(m["ratio"], n=4) if len(m["ratio"]) > 1 else m["ratio"] * 3
    print(
        f"Qwen2 hidden 256 x 4 layers, vocab 384 (random, fp32, {args.device}, "
        f"{threads} CPU threads); "
        f"prompt {len(adapter.tokenizer.encode(PROMPTS[0]))} tokens, {gen[3]} new tokens "
        f"greedy, {args.rounds} rounds; same text: {same}; load average "
        f"{os.getloadavg()[0]:.1f}"
    )
    print(f"  llmforge generate loop:    {med(r[0] for r in m['gen']):7.1f} tok/s")
    first = med(r[4] for r in m["srv"])
    print(
        f"  serve, 1 streamed request: {med(r[0] for r in m['srv']):7.1f} tok/s "
        f"(first text after {first:.3f} s)"
    )
    print(
        f"  ratio serve/generate:      {med(m['ratio']):7.2f}x median of rounds "
        f"(quartiles {q[0]:.2f}-{q[2]:.2f}; goal >= 0.95x)"
    )
    g_cpu, s_cpu, c_cpu = (med(m[k]) * 1e3 for k in ("gen_cpu", "srv_cpu", "client_cpu"))
    print(
        f"  CPU per token:             generate {g_cpu:.2f} ms; server {s_cpu:.2f} ms "
        f"({s_cpu / g_cpu:.2f}x) + openai client {c_cpu:.2f} ms"
    )
    together, one_by_one = med(m["together"]), med(m["one_by_one"])
    print(
        f"  serve, 4 clients at once:  {together:7.1f} tok/s total vs {one_by_one:.1f} tok/s "
        f"for the same 4 requests one after another ({together / one_by_one:.2f}x; 3 rounds)"
    )


if __name__ == "__main__":
    main()
