#!/usr/bin/env bash
# The GPU check: run once on a machine with one NVIDIA GPU, from the repository root, with peftbench installed
# (pip install -e '.[hub,qlora]'). Budget: under 10 minutes on an H100/H200 (each step has its own time limit).
#
#   1. the default comparison (embedded SmolLM2-135M; full, LoRA, IA3) with bf16 mixed precision;
#   2. the efficiency benchmarks (bench_train.py, bench_generate.py);
#   3. QLoRA (LoRA on a 4-bit NF4 base) on the default's data, against step 1's LoRA: peak memory and quality;
#   4. DDP through torchrun when the machine has two GPUs or more.
#
# Everything lands in $OUT (default gpu-check/): gpu-check.log (all output), one summary per run and the
# benchmark JSON. A step that fails or runs out of time is reported and the next one runs.
set -uo pipefail
OUT=${OUT:-gpu-check}
WORK=${WORK:-/tmp/peftbench-gpu-check}  # run outputs: adapters and checkpoints are too big to bring back
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec > >(tee -a "$OUT/gpu-check.log") 2>&1

step() {  # step NAME LIMIT_SECONDS COMMAND...: timed, limited, and never fatal for the steps after it
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit} s): $*"
    local started=$SECONDS
    timeout "$limit" "$@"
    local rc=$?
    echo "== $name: exit $rc after $((SECONDS - started)) s"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python - <<'EOF'
import torch, transformers, peft, accelerate
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), transformers {transformers.__version__}, "
      f"peft {peft.__version__}, accelerate {accelerate.__version__}; {torch.cuda.device_count()} GPU(s): "
      f"{torch.cuda.get_device_name(0)}, bf16 {torch.cuda.is_bf16_supported()}")
try:
    import bitsandbytes
    print("bitsandbytes", bitsandbytes.__version__)
except ImportError:
    print("bitsandbytes: not installed (step 3 will say so)")
EOF

# 1. The default comparison on the GPU, bf16 (the first use converts the embedded GGUF model: timed in this step).
step default 300 python -m peftbench run --output "$WORK/default" --precision bf16 --force
cp "$WORK/default/summary.md" "$OUT/default-summary.md"

# 2. Efficiency benchmarks: training variants a/b/c (fp32 and bf16 as bench_train chooses) and generation.
step bench-train 150 python benchmarks/bench_train.py --json "$OUT/bench_train.json"
step bench-generate 90 python benchmarks/bench_generate.py

# 3. QLoRA on the same data and budget as step 1's LoRA: compare the two summaries' peak memory and ROUGE-L.
step qlora 150 python -m peftbench run --output "$WORK/qlora" --precision bf16 --methods lora --quantize 4bit --force
cp "$WORK/qlora/summary.md" "$OUT/qlora-summary.md"

# 4. DDP: one step's batch split over the GPUs; metrics gathered, the main process writes.
if [ "$(nvidia-smi -L | wc -l)" -ge 2 ]; then
    step ddp 200 torchrun --nproc-per-node 2 -m peftbench run --output "$WORK/ddp" --precision bf16 \
        --methods lora --force
    cp "$WORK/ddp/summary.md" "$OUT/ddp-summary.md"
else
    echo "== ddp: skipped (one GPU; the two-process path is tested on CPU with gloo in tests/test_parallel.py)"
fi
