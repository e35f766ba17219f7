"""llmforge vs the peers a user would otherwise pick: transformers' Trainer and TRL's SFTTrainer.

    python benchmarks/bench_peers.py                          # Qwen2 'tiny' shape, all candidates
    python benchmarks/bench_peers.py --shape small --rounds 2 --steps 6
    python benchmarks/bench_peers.py --only trl-pack          # one candidate, this process

Every candidate fine-tunes the same Qwen2-shaped model (random weights from one seed, bf16) on
the same chat data: ``--examples`` conversations of mixed length (a short prompt that is not
trained on and an answer that is; lengths drawn from a seeded RNG, mostly short with a long
tail, as real chat sets are), given as token ids so no tokenizer differs. Micro-batch
``--batch``, AdamW, lr 2e-5, grad clip 1, no eval, no checkpoints. Candidates:

- ``llmforge`` / ``llmforge-pack``: ``Trainer`` with the padded / packed example batches of
  ``llmforge train`` (``packing: false`` / ``true``, the default; its fast bf16 defaults: bf16
  weights + fp32 masters, fused loss, fused AdamW);
- ``hf``: ``transformers.Trainer(bf16=True, use_cpu=...)`` with a padding collator;
- ``trl-pad`` / ``trl-pack``: TRL's ``SFTTrainer`` with ``packing=False`` / ``packing=True``
  (its default best-fit packing, padding-free) on the same records (``completion_mask``).

All candidates train on the same examples in the same order: llmforge's sampler draws them
(seeded), and the peers read that sequence sequentially (``train_sampling_strategy``
"sequential"; TRL's packing packs the same examples). Each candidate runs in its own process
(for its peak RSS), candidates alternate round by round. Reported: real (non-padding) tokens
per second over the steps after the first two (their sum over the steps' time), and the
process's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CANDIDATES = ["llmforge", "llmforge-pack", "hf", "trl-pad", "trl-pack"]
LR = 2e-5


def chat_records(n: int, vocab: int, seq: int, seed: int = 0) -> list[dict]:
    """Token-id conversations: ``input_ids`` and ``completion_mask`` (1 = trained)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    records = []
    for _ in range(n):
        prompt = int(torch.randint(8, 48, (1,), generator=g))
        # Answers: mostly short, one in eight long (up to the sequence length).
        long = float(torch.rand((), generator=g)) < 0.125
        low, high = (seq // 2, seq) if long else (16, 96)
        answer = int(torch.randint(low, high, (1,), generator=g))
        total = min(prompt + answer, seq)
        ids = torch.randint(3, vocab, (total,), generator=g).tolist()
        records.append({"input_ids": ids, "completion_mask": [0] * prompt + [1] * (total - prompt)})
    return records


class StepTimes:
    """Per-step wall time and the real tokens the step's batches held."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.tokens: list[int] = []
        # real tokens of each batch made, oldest first: a step trains on the oldest one not
        # yet trained on (accelerate's data loader collates one batch ahead of the step)
        self.made: list[int] = []
        self.mark = 0.0

    def begin(self) -> None:
        self.mark = time.perf_counter()

    def end(self) -> None:
        self.times.append(time.perf_counter() - self.mark)
        self.tokens.append(self.made.pop(0) if self.made else 0)

    def rate(self, skip: int = 2, upto: int | None = None) -> float:
        """Real tokens per second over steps ``skip + 1 .. upto``: their sum over the steps'
        time (a median of per-step rates would weigh a step of short examples, where the
        fixed per-step work dominates, like one of long ones)."""
        return sum(self.tokens[skip:upto]) / sum(self.times[skip:upto])


def counting(collate, times: StepTimes):
    """Wrap a collator so each batch's real tokens are counted (padding-free: all of them)."""

    def collate_and_count(features):
        batch = collate(features)
        mask = batch.get("attention_mask")
        times.made.append(int(mask.sum()) if mask is not None else int(batch["input_ids"].numel()))
        return batch

    return collate_and_count


def run_llmforge(model, records, args, times: StepTimes, packed: bool = False) -> None:
    from llmforge.adapters.qwen import Qwen2Adapter
    from llmforge.config import TrainingConfig
    from llmforge.device import resolve_device
    from llmforge.modeling.tokenizers import CharTokenizer
    from llmforge.training.distributed import DistContext
    from llmforge.training.optim import build_optimizer
    from llmforge.training.trainer import Trainer

    cfg = TrainingConfig(
        model_name="bench",
        block_size=args.seq,
        batch_size=args.batch,
        precision="bf16",
        device=args.device,
        learning_rate=LR,
        weight_decay=0.0,
        warmup_steps=0,
        max_steps=args.steps,
        log_interval=1,
        eval_interval=10**6,
        save_interval=10**6,
        sample_interval=0,
    )
    sampler = _llmforge_sampler(records, args, cfg.seed, packed)[0]
    batch = sampler.batch

    # Real tokens of a batch: the lengths of the examples drawn (padding follows each).
    def real_tokens(step: int, micro: int):
        drawn = sampler.draw(step, micro)
        times.made.append(sum(_row_length(sampler.examples[i].labels) for i in drawn))
        return batch(step, micro)

    sampler.batch = real_tokens  # type: ignore[method-assign]
    adapter = Qwen2Adapter(model, CharTokenizer(["a"]))

    class Timer:
        def on_step(self, metrics: dict) -> None:
            times.end()
            times.begin()

    with tempfile.TemporaryDirectory() as home:
        trainer = Trainer(
            cfg,
            adapter,
            build_optimizer(adapter, cfg),
            sampler,
            sampler,
            Path(home),
            {},
            dist=DistContext(device=resolve_device(args.device)),
        )
        trainer.callbacks = [Timer()]
        times.begin()
        trainer.fit(stop_at=args.steps - 1)  # before the final checkpoint


def _llmforge_sampler(records, args, seed: int, packed: bool = False):
    """llmforge's example sampler over ``records``, and the record index of each example."""
    from llmforge.data.packing import PackedExampleSampler
    from llmforge.data.samplers import ExampleSampler, make_example

    examples, index = [], []
    for i, r in enumerate(records):
        e = make_example(r["input_ids"], [bool(m) for m in r["completion_mask"]], args.seq)
        if e is not None:
            examples.append(e)
            index.append(i)
    kind = PackedExampleSampler if packed else ExampleSampler
    return kind(examples, args.seq, args.batch, seed, 0), index


def in_draw_order(records: list[dict], args) -> list[dict]:
    """The records llmforge's sampler draws for steps 0..steps-1, in order: the peers read
    them sequentially, so every candidate trains on the same examples in the same order."""
    from llmforge.config import TrainingConfig

    seed = TrainingConfig(model_name="bench").seed
    sampler, index = _llmforge_sampler(records, args, seed)
    return [records[index[i]] for step in range(args.steps) for i in sampler.draw(step, 0)]


def _row_length(labels_row) -> int:
    """Positions up to the last trained target (the example's length; padding is after it)."""
    nz = (labels_row != -100).nonzero()
    return int(nz[-1]) + 1 if len(nz) else 0


def hf_callback(times: StepTimes):
    from transformers import TrainerCallback

    class Times(TrainerCallback):
        def on_step_begin(self, *a, **k):
            times.begin()

        def on_step_end(self, *a, **k):
            times.end()

    return Times()


def run_hf(model, records, args, times: StepTimes, out: str) -> None:
    import torch
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    rows = []
    for r in records:
        pairs = zip(r["input_ids"], r["completion_mask"], strict=True)
        rows.append({"input_ids": r["input_ids"], "labels": [t if m else -100 for t, m in pairs]})

    def collate(features):
        t = max(len(f["input_ids"]) for f in features)
        ids = torch.zeros((len(features), t), dtype=torch.long)
        labels = torch.full((len(features), t), -100, dtype=torch.long)
        mask = torch.zeros((len(features), t), dtype=torch.long)
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            ids[i, :n] = torch.tensor(f["input_ids"])
            labels[i, :n] = torch.tensor(f["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    targs = TrainingArguments(
        output_dir=out,
        per_device_train_batch_size=args.batch,
        max_steps=args.steps,
        learning_rate=LR,
        bf16=True,
        use_cpu=args.device == "cpu",
        logging_steps=10**6,
        save_strategy="no",
        report_to="none",
        max_grad_norm=1.0,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        train_sampling_strategy="sequential",  # the records come in llmforge's draw order
    )
    trainer = Trainer(
        model=model,
        args=targs,
        train_dataset=Dataset.from_list(rows),
        data_collator=counting(collate, times),
        callbacks=[hf_callback(times)],
    )
    trainer.train()


def run_trl(model, records, args, times: StepTimes, out: str, packing: bool) -> None:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    sargs = SFTConfig(
        output_dir=out,
        per_device_train_batch_size=args.batch,
        max_steps=args.steps,
        learning_rate=LR,
        bf16=True,
        use_cpu=args.device == "cpu",
        logging_steps=10**6,
        save_strategy="no",
        report_to="none",
        max_grad_norm=1.0,
        max_length=args.seq,
        packing=packing,
        dataloader_num_workers=0,
        train_sampling_strategy="sequential",  # the records come in llmforge's draw order
    )
    trainer = SFTTrainer(
        model=model,
        args=sargs,
        train_dataset=Dataset.from_list(records),
        processing_class=_tiny_tokenizer(),
        callbacks=[hf_callback(times)],
    )
    trainer.data_collator = counting(trainer.data_collator, times)
    trainer.train()


def _tiny_tokenizer():
    """A tokenizer object for TRL's bookkeeping (pad id 0); the data is already token ids."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"<pad>": 0, "<eos>": 1, "<unk>": 2}, unk_token="<unk>"))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )


def run_one(args) -> dict:
    """Train ``args.only`` in this process; its tokens/s and peak RSS."""
    import torch
    from _qwen_shapes import QWEN_SHAPES, qwen_model

    if args.threads:
        torch.set_num_threads(args.threads)
    vocab = QWEN_SHAPES[args.shape][5]
    records = chat_records(args.examples, vocab, args.seq)
    model = qwen_model(args.shape).train()
    if args.device != "cpu":
        model.to(args.device)
    times = StepTimes()
    with tempfile.TemporaryDirectory() as out:
        if args.only in ("llmforge", "llmforge-pack"):
            run_llmforge(model, records, args, times, packed=args.only == "llmforge-pack")
        elif args.only == "hf":
            run_hf(model, in_draw_order(records, args), args, times, out)
        else:
            ordered = in_draw_order(records, args)
            run_trl(model, ordered, args, times, out, packing=args.only == "trl-pack")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {
        "candidate": args.only,
        # llmforge stops after step steps - 1 (before its final checkpoint): the same steps
        # count for every candidate
        "tok_s": times.rate(upto=args.steps - 1),
        "steps": len(times.times[2 : args.steps - 1]),
        # counted: the same for every padded candidate (the same examples)
        "tokens": sum(times.tokens[2 : args.steps - 1]),
        "rss": rss,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="tiny", help="tiny | small | 0.5b (_qwen_shapes.py)")
    ap.add_argument("--seq", type=int, default=512, help="longest example (positions)")
    ap.add_argument("--batch", type=int, default=4, help="micro-batch (examples or packed rows)")
    ap.add_argument("--examples", type=int, default=400)
    ap.add_argument("--steps", type=int, default=8, help="steps per run (first 2 not counted)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--candidates", default=",".join(CANDIDATES))
    ap.add_argument("--only", choices=CANDIDATES, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.only:
        print("RESULT " + json.dumps(run_one(args)), flush=True)
        return
    names = [c.strip() for c in args.candidates.split(",")]
    load = os.getloadavg()
    print(
        f"Qwen2 shape {args.shape!r}, bf16, micro-batch {args.batch}, seq <= {args.seq}, "
        f"{args.examples} chat examples, {args.steps} steps x {args.rounds} rounds, "
        f"device {args.device}; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
        flush=True,
    )
    results: dict[str, list[dict]] = {n: [] for n in names}
    passthrough = _without_candidates(sys.argv[1:])
    for _ in range(args.rounds):
        for name in names:
            cmd = [sys.executable, __file__, *passthrough, "--only", name]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=_env())
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not line:
                print(f"  {name}: failed (exit {proc.returncode}): {proc.stderr.strip()[-800:]}")
                continue
            r = json.loads(line[-1][7:])
            results[name].append(r)
            print(
                f"  {name:13s} {r['tok_s']:9,.1f} tok/s   peak RSS {r['rss']:.2f} GiB   "
                f"({r['steps']} steps counted, {r['tokens']:,} real tokens)",
                flush=True,
            )
    base = results.get("llmforge") or []
    ours = statistics.median(r["tok_s"] for r in base) if base else None
    print("medians over rounds:")
    for name, rs in results.items():
        if not rs:
            continue
        tok = statistics.median(r["tok_s"] for r in rs)
        rss = max(r["rss"] for r in rs)
        vs = f"   llmforge / {name} = {ours / tok:.2f}x" if ours and name != "llmforge" else ""
        print(f"  {name:13s} {tok:9,.1f} tok/s   peak RSS {rss:.2f} GiB{vs}")
    load = os.getloadavg()
    print(f"load average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


def _without_candidates(argv: list[str]) -> list[str]:
    """The command line minus ``--candidates X`` / ``--candidates=X`` (each child gets --only)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--candidates":
            skip = True
        elif not a.startswith("--candidates="):
            out.append(a)
    return out


def _env() -> dict:
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the llmforge CLI runs, for every candidate
    return env


if __name__ == "__main__":
    main()
