"""GGUF export time and peak memory: `ckpt export --format gguf` vs llama.cpp's converter.

Builds a random Qwen2 folder of the Qwen2-0.5B shape (bf16 safetensors like Qwen's own; the
tiny trained tokenizer of tests/tiny_models.py, padded to the 151936 embedding rows), imports
it into a temporary workspace (not timed), then per dtype runs, each in a fresh process,
llmforge's export (``exporting.gguf_export.export_gguf``, what ``llmforge ckpt export NAME DIR
--format gguf`` runs) and llama.cpp's ``convert_hf_to_gguf.py`` on the same folder. It prints
wall time, peak RSS (VmHWM: every resident page, the mmapped source included), sampled peak
anonymous RSS (the heap), their ratio to the F32 file, and whether both files hold
byte-identical tensors.

The converter is the one vendored with llama-cpp-python (``LLAMA_CPP_DIR``, default
/work/ref/llama_cpp_python-0.3.36/vendor/llama.cpp); it needs ``sentencepiece`` for every
Qwen2 and refuses tokenizers it does not know by hash, so it is told "qwen2" for that check
alone (:func:`upstream`). Without it only llmforge's numbers are printed.

Usage:
    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_gguf.py [--layers 24] [--dtypes f32,f16,q8_0]
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LLAMA_CPP = Path(
    os.environ.get("LLAMA_CPP_DIR", "/work/ref/llama_cpp_python-0.3.36/vendor/llama.cpp")
)


def build(folder: Path, layers: int) -> None:
    """A random Qwen2-0.5B-shaped folder with ``layers`` decoder layers (tied, bf16)."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_models import README, build_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    build_tokenizer(folder)
    cfg = Qwen2Config(
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=layers,
        num_attention_heads=14,
        num_key_value_heads=2,
        vocab_size=151936,
        max_position_embeddings=32768,
        tie_word_embeddings=True,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        eos_token_id=0,
        bos_token_id=0,
    )
    torch.manual_seed(0)
    with torch.device("meta"):
        model = Qwen2ForCausalLM(cfg)
    model = model.to_empty(device="cpu").to(torch.bfloat16)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    model.tie_weights()  # to_empty() unties them; tied, the file has no lm_head (as Qwen's)
    model.save_pretrained(folder)
    GenerationConfig(eos_token_id=[0, 2], pad_token_id=0).save_pretrained(folder)
    (folder / "README.md").write_text(README, encoding="utf-8")


class AnonPeak:
    """Samples RssAnon of this process every 20 ms (heap, not page cache or mmaps)."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _status("RssAnon"))
            time.sleep(0.02)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak, _status("RssAnon"))


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def upstream(folder: Path, out: Path, dtype: str) -> None:
    """llama.cpp's convert_hf_to_gguf.py main(), unchanged but for the tokenizer-hash check."""
    sys.path.insert(0, str(LLAMA_CPP / "gguf-py"))
    sys.path.insert(0, str(LLAMA_CPP))
    from conversion.base import TextModel

    TextModel.get_vocab_base_pre = lambda self, tokenizer: "qwen2"
    script = str(LLAMA_CPP / "convert_hf_to_gguf.py")
    sys.argv = [script, str(folder), "--outfile", str(out), "--outtype", dtype]
    runpy.run_path(script, run_name="__main__")


def child(tool: str, source: str, out: Path, dtype: str) -> None:
    """Run one export in this process and print its measurements as JSON."""
    sampler = AnonPeak()
    start = time.perf_counter()
    if tool == "llmforge":
        from llmforge.exporting.gguf_export import export_gguf
        from llmforge.workspace import Workspace

        home, name = source.split("::")
        export_gguf(Workspace(root=Path(home)), name, out, dtype=dtype, force=True)
    else:
        upstream(Path(source), out, dtype)
    wall = time.perf_counter() - start
    print(json.dumps({"wall": wall, "hwm": _status("VmHWM"), "anon": sampler.stop()}))


def same_tensors(a: Path, b: Path) -> bool:
    """Whether two GGUF files hold the same tensors (names, types, shapes, bytes)."""
    import gguf
    import numpy as np

    ta = {t.name: t for t in gguf.GGUFReader(a).tensors}
    tb = {t.name: t for t in gguf.GGUFReader(b).tensors}
    return ta.keys() == tb.keys() and all(
        ta[n].tensor_type == tb[n].tensor_type
        and list(ta[n].shape) == list(tb[n].shape)
        and np.array_equal(ta[n].data.view(np.uint8), tb[n].data.view(np.uint8))
        for n in ta
    )


def _upstream_available() -> bool:
    try:
        import sentencepiece  # noqa: F401
    except ImportError:
        return False
    return (LLAMA_CPP / "convert_hf_to_gguf.py").is_file()


def _run(tool: str, source: str, out: Path, dtype: str) -> dict:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, __file__, "--child", tool, source, str(out), dtype]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def _workspace(work: Path, folder: Path) -> Path:
    """A workspace holding ``folder`` imported as ``bench`` (llmforge exports it by name)."""
    from typer.testing import CliRunner

    from llmforge.cli import app

    home = work / f"ws-{folder.name}"
    if not (home / "models" / "bench").is_dir():
        home.mkdir(parents=True, exist_ok=True)
        args = ["--home", str(home), "models", "import", str(folder), "--name", "bench"]
        res = CliRunner().invoke(app, [*args, "--accept-license"])
        assert res.exit_code == 0, res.output
    return home


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--dtypes", default="f32,f16,q8_0")
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "llmforge-gguf-bench")
    ap.add_argument("--child", nargs=4, metavar=("TOOL", "SOURCE", "OUT", "DTYPE"))
    args = ap.parse_args()
    if args.child:
        tool, source, out, dtype = args.child
        child(tool, source, Path(out), dtype)
        return
    folder = args.dir / f"qwen2-896x{args.layers}"
    if not (folder / "model.safetensors").is_file():
        build(folder, args.layers)
    home = _workspace(args.dir, folder)
    tools = ["llmforge", *(["upstream"] if _upstream_available() else [])]
    src = (folder / "model.safetensors").stat().st_size
    print(f"source: {folder} ({src / 2**20:.0f} MiB bf16); load: {os.getloadavg()[0]:.1f}")
    print(f"{'dtype':6} {'tool':9} {'wall s':>7} {'file MiB':>9} {'peak RSS MiB':>13} "
          f"{'peak anon MiB':>14} {'RSS/f32 file':>13}")  # fmt: skip
    f32_size = None
    for dtype in args.dtypes.split(","):
        outs = {}
        for tool in tools:
            out = args.dir / f"{tool}-{dtype}"
            source = f"{home}::bench" if tool == "llmforge" else str(folder)
            m = _run(tool, source, out if tool == "llmforge" else out.with_suffix(".gguf"), dtype)
            file = next(out.glob("*.gguf")) if tool == "llmforge" else out.with_suffix(".gguf")
            size = file.stat().st_size
            f32_size = size if dtype == "f32" and f32_size is None else f32_size
            ratio = f"{m['hwm'] / f32_size:.2f}" if f32_size else "-"
            print(
                f"{dtype:6} {tool:9} {m['wall']:7.1f} {size / 2**20:9.0f} "
                f"{m['hwm'] / 2**20:13.0f} {m['anon'] / 2**20:14.0f} {ratio:>13}",
                flush=True,
            )
            outs[tool] = file
        if len(outs) == 2:
            print(f"       identical tensors: {same_tensors(outs['llmforge'], outs['upstream'])}")
        for file in outs.values():
            file.unlink()
    print(f"load after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
