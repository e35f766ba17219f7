#!/usr/bin/env bash
# The training, LoRA, generation and eval benchmarks on a CUDA machine, in under 5 minutes.
#
#   bash benchmarks/gpu.sh                      # from the repository root, llmforge installed
#   NANOGPT=~/src/nanoGPT bash benchmarks/gpu.sh  # also llmforge vs nanoGPT (a checkout of it)
#
# Each benchmark runs with --device cuda (llmforge's `device: auto` picks the GPU the same way)
# under its own time limit; the full output goes to $LOG and the ratio lines are printed at
# the end. Not yet run on a GPU (no GPU was lent when it was written): see benchmarks/README.md.
set -u
cd "$(dirname "$0")"
LOG=${LOG:-gpu-bench.log}
: > "$LOG"
python -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' || {
    echo "gpu.sh: torch sees no CUDA device here (torch.cuda.is_available() is False)." >&2
    echo "Run it on a machine with a GPU and a CUDA build of torch." >&2
    exit 2
}
python -c 'import torch; print("device:", torch.cuda.get_device_name(0), "torch", torch.__version__)' | tee -a "$LOG"

run() {  # run LIMIT_SECONDS NAME COMMAND...
    local limit=$1 name=$2
    shift 2
    echo "== $name: $*" | tee -a "$LOG"
    local t0=$SECONDS
    timeout "$limit" "$@" >> "$LOG" 2>&1
    local rc=$?
    echo "   ($((SECONDS - t0)) s, exit $rc)" | tee -a "$LOG"
}

run 60 "train: custom Transformer, bf16 vs bare fp32 loop" \
    python bench_train.py --model custom --steps 30 --precision bf16 --bare-precision fp32 --device cuda
run 60 "train: Qwen2 small shape, seq 512, bf16 vs bare bf16 loop" \
    python bench_train.py --model qwen --qwen-shape small --seq 512 --steps 15 --precision bf16 --device cuda
if [ -n "${NANOGPT:-}" ]; then
    run 60 "train: llmforge vs nanoGPT (shakespeare-char shape)" \
        python bench_nanogpt.py --nanogpt "$NANOGPT" --device cuda --steps 30 --warmup 5
fi
run 60 "LoRA vs full fine-tune, Qwen2 small shape" \
    python bench_lora.py --shape small --seq 512 --precision bf16 --rounds 2 --steps 6 --warmup 2 --device cuda
run 30 "generation, Qwen2 small shape" \
    python bench_generate.py --shape small --runs 3 --new 32 --device cuda
run 30 "held-out eval" \
    python bench_eval.py --docs 8 --repeat 3 --device cuda

echo
echo "== ratios (full output: benchmarks/$LOG)"
grep -iE "ratio|llmforge ?/|[0-9]x|same tokens|load average" "$LOG"
