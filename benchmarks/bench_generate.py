"""Greedy generation: llmforge's KV-cache loop vs ``transformers`` ``generate()``, side by side.

    python benchmarks/bench_generate.py                       # Qwen2-0.5B shape, random weights
    python benchmarks/bench_generate.py --shape small --prompt 256 --new 64

Both candidates run the same model (random weights from a config: no download) on the same
prompt, greedy, the same number of new tokens; they alternate run by run in one process. It
prints the median time to the first new token (the prompt's prefill) and the decode speed
(new tokens after the first per second), and the ratios llmforge / transformers (> 1 is
faster). Time to the first token here is in-process; ``llmforge generate`` adds its start-up
and the model load, see benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _qwen_shapes import QWEN_SHAPES, qwen_model

from llmforge.device import resolve_device
from llmforge.inference.generation import SamplingOptions, stream_ids


def build(shape: str):
    from llmforge.adapters.qwen import Qwen2Adapter
    from llmforge.modeling.tokenizers import CharTokenizer

    model = qwen_model(shape).eval()
    model.generation_config.eos_token_id = None  # random weights: never stop early
    model.generation_config.pad_token_id = 0
    return model, Qwen2Adapter(model, CharTokenizer(["a"]))


def run_ours(adapter, prompt: list[int], new: int) -> tuple[float, float, list[int]]:
    opts = SamplingOptions(max_new_tokens=new, temperature=0.0)
    t0 = time.perf_counter()
    out, t_first = [], 0.0
    for tok in stream_ids(adapter, prompt, opts):
        if not out:
            t_first = time.perf_counter() - t0
        out.append(tok)
    return t_first, time.perf_counter() - t0, out


def run_hf(model, prompt: list[int], new: int) -> tuple[float, float, list[int]]:
    from transformers.generation.streamers import BaseStreamer

    class First(BaseStreamer):
        def __init__(self) -> None:
            self.calls, self.t = 0, 0.0

        def put(self, value) -> None:
            self.calls += 1
            if self.calls == 2:  # the first put() is the prompt itself
                self.t = time.perf_counter()

        def end(self) -> None:
            pass

    s = First()
    t0 = time.perf_counter()
    with torch.no_grad():
        ids = model.generate(
            torch.tensor([prompt], device=model.device),
            max_new_tokens=new,
            min_new_tokens=new,
            do_sample=False,
            streamer=s,
        )
    return s.t - t0, time.perf_counter() - t0, ids[0, len(prompt) :].tolist()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(QWEN_SHAPES), default="0.5b")
    ap.add_argument("--prompt", type=int, default=128, help="prompt tokens")
    ap.add_argument("--new", type=int, default=32, help="new tokens")
    ap.add_argument("--runs", type=int, default=5, help="measured runs per candidate")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    args = ap.parse_args()
    model, adapter = build(args.shape)
    device = resolve_device(args.device)
    model.to(device)
    prompt = torch.randint(0, model.config.vocab_size, (args.prompt,)).tolist()
    ours, hf = [], []
    for i in range(args.runs + 1):  # the first round warms up and is dropped
        a = run_ours(adapter, prompt, args.new)
        b = run_hf(model, prompt, args.new)
        if i:
            ours.append(a)
            hf.append(b)
    same = ours[-1][2] == hf[-1][2]

    def summary(rs):
        first = statistics.median(r[0] for r in rs)
        decode = statistics.median((len(r[2]) - 1) / (r[1] - r[0]) for r in rs)
        return first, decode

    (f_o, d_o), (f_h, d_h) = summary(ours), summary(hf)
    n = sum(p.numel() for p in model.parameters())
    print(
        f"Qwen2 shape {args.shape!r} ({n / 1e6:.0f}M parameters, fp32), prompt {args.prompt} "
        f"tokens, {args.new} new tokens greedy, {device}, {torch.get_num_threads()} threads, "
        f"runs {args.runs}; same tokens: {same}"
    )
    print(f"  llmforge stream_ids:      first token {f_o:.3f} s, decode {d_o:.1f} tok/s")
    print(f"  transformers generate():  first token {f_h:.3f} s, decode {d_h:.1f} tok/s")
    print(f"  ratio llmforge/transformers: first token {f_h / f_o:.2f}x, decode {d_o / d_h:.2f}x")


if __name__ == "__main__":
    main()
