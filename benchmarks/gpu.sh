#!/usr/bin/env bash
# The GPU checks on the real SDXL architecture (random weights, nothing downloaded), one after another:
#   bash benchmarks/gpu.sh [OUT_DIR]        # every JSON line also goes to OUT_DIR/gpu_checks.jsonl
# Run where python3 has torch, diffusers, transformers, open_clip_torch and pydantic (no Ray or MLflow needed).
set -uo pipefail
out=${1:-.}
cd "$(dirname "$0")/.."
export PYTHONPATH=".:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
check() {  # name, then the command; its last line (a JSON object) is kept
    echo "== $1"
    local log="$out/$1.log"
    shift
    timeout 300 "$@" 2>&1 | tee "$log" | tail -n 3
    tail -n 1 "$log" >> "$out/gpu_checks.jsonl"
}
nvidia-smi -L
check kd_step python3 benchmarks/kd_step.py --preset sdxl --batch 4 --reps 5 --warmup 2
check kd_step_checkpointed python3 benchmarks/kd_step.py --preset sdxl --batch 16 --gradient-checkpointing --reps 5 --warmup 2
check memory python3 benchmarks/kd_step.py --preset sdxl --batch 2 --memory-batches 1,2,4,8,16
check memory_checkpointed python3 benchmarks/kd_step.py --preset sdxl --batch 2 --memory-batches 4,8,16,32 --gradient-checkpointing
check train python3 benchmarks/train.py --sdxl --no-cpu-scaling --sdxl-batch 4
check cache_batch python3 benchmarks/cache_batch.py --preset sdxl --gpu-gb 40
check stage_rates python3 benchmarks/stage_rates.py --preset sdxl
check sd15 python3 benchmarks/kd_step.py --preset sd15 --batch 16 --reps 5 --warmup 2
check sd15_checkpointed python3 benchmarks/kd_step.py --preset sd15 --batch 16 --gradient-checkpointing --reps 5 --warmup 2
check sd15_memory python3 benchmarks/kd_step.py --preset sd15 --batch 2 --memory-batches 8,16,32,48
