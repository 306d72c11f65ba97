#!/usr/bin/env bash
# The GPU check: run once on a machine with an NVIDIA GPU, from a checkout of this repository plus the kit that
# benchmarks/gpu_kit.sh builds (missing wheels, a slice of the embedded data, SmolLM2's tokenizer). It needs no
# registry and no `pip install` of peftbench: the kit's wheels go into a folder of their own beside the machine's own
# torch, transformers, peft and accelerate, and peftbench runs from src/ (PYTHONPATH). Models have random weights of
# real shapes (benchmarks/shapes/): speed, memory and precision figures only.
#
#   bash benchmarks/gpu_check.sh                          # on the GPU machine (about 10 minutes at most)
#   GPU_CHECK_REHEARSE=1 bash benchmarks/gpu_check.sh     # the same steps on CPU with a tiny shape (under 5 minutes)
#
# Steps, each time-limited and within one overall budget; one that fails or runs out of time is reported and the
# next one runs:
#   kit            install the kit's wheels into WORK/site (pip --no-index --no-deps --target)
#   environment    versions, the GPU, and where each kit package is imported from
#   compare        full, LoRA and IA3 in bf16 on the SmolLM2-135M shape, default sizes
#   lora-large     LoRA on the ~1B shape (Llama-3.2-1B's), short; the first use draws its random weights
#   qlora-large    the same on a 4-bit NF4 base (--quantize 4bit): peak memory and tokens/s against lora-large
#   dtype-check    every method trains, evaluates, generates and is timed at one precision (benchmarks/dtype_check.py)
#   bench-train    bench_train.py a/b (peftbench's loop against HF Trainer, bf16) on the 135M shape
#   bench-generate bench_generate.py on the 135M shape
#   ddp            LoRA through torchrun on two GPUs, where the machine has two or more
# The rehearsal runs them all on CPU in fp32 with benchmarks/shapes/tiny-llama and small sizes, except QLoRA (no
# CUDA there), and fails (exit 1) if any step does, so the script cannot rot between GPU sessions.
#
# Results, at most 8 files in OUT (default gpu-check/): gpu-check.log (everything printed), compare-summary.md,
# qlora-vs-lora.md, dtype-check.json, bench_train.json and results.json (every run's metrics.json). Run outputs
# (adapters, saved models, the random weights) stay in WORK (default: a new temporary folder, removed at the end).
#
# Environment: GPU_CHECK_KIT (default .gpu-kit), PYTHON (default python3: the machine's own, with CUDA torch), OUT,
# WORK, GPU_CHECK_BUDGET (seconds for all steps; default 570, rehearsal 420).
set -uo pipefail
cd "$(dirname "$0")/.."
REHEARSE=${GPU_CHECK_REHEARSE:-0}
KIT=${GPU_CHECK_KIT:-.gpu-kit}
PYTHON=${PYTHON:-python3}
OUT=${OUT:-gpu-check}

if [ ! -f "$KIT/kit.txt" ]; then
    echo "gpu_check: no kit in $KIT; build it where PyPI is reachable: bash benchmarks/gpu_kit.sh $KIT" >&2
    exit 2
fi
KIT=$(realpath "$KIT")
mkdir -p "$OUT" && OUT=$(realpath "$OUT")
FILES=(gpu-check.log compare-summary.md qlora-vs-lora.md dtype-check.json bench_train.json results.json)
for file in "${FILES[@]}"; do rm -f "${OUT:?}/$file"; done  # an earlier check's results are not this one's

if [ "$REHEARSE" = 1 ]; then
    BUDGET=${GPU_CHECK_BUDGET:-420}  # a cap for a busy machine: about 2 to 4 minutes on 2 cores
    PRECISION=fp32
    SMALL_SHAPE=tiny-llama
    LARGE_SHAPE=tiny-llama
    TINY=(--train-size 8 --eval-size 4 --test-size 4 --epochs 1 --batch-size 4 --max-source-tokens 48
          --max-target-tokens 16 --max-new-tokens 8 --latency-prompts 1 --latency-rounds 2 --latency-new-tokens 4)
    COMPARE_SIZES=("${TINY[@]}")
    LARGE_SIZES=("${TINY[@]}")
    DTYPE_ARGS=(--methods full,lora,prefix)  # merged, unmerged-only and full paths; all 14 take 90 s here
    TRAIN_SIZES=(--methods lora --steps 2 --batch-size 2 --max-source-tokens 48 --max-target-tokens 16 --truncate)
    GENERATE_SIZES=(--batch-size 4 --latency-prompts 2 --new-tokens 4 --rounds 2 --max-source-tokens 48)
else
    BUDGET=${GPU_CHECK_BUDGET:-570}
    PRECISION=bf16
    SMALL_SHAPE=smollm2-135m
    LARGE_SHAPE=llama-3.2-1b
    COMPARE_SIZES=()  # the default run's sizes
    LARGE_SIZES=(--train-size 32 --eval-size 8 --test-size 8 --epochs 1 --eval-generate-size 4 --max-new-tokens 32
                 --latency-prompts 2 --latency-new-tokens 16)
    DTYPE_ARGS=()  # every method
    TRAIN_SIZES=()  # full, LoRA and IA3, 6 steps of 4 whole articles of up to 384 tokens
    GENERATE_SIZES=(--latency-prompts 4 --rounds 8)  # 16 new tokens per prompt, batched at 16
fi

# Imports the kit installed, names where each comes from, and fails where one is missing.
read -r -d '' ENVIRONMENT <<'EOF'
import importlib, os, sys
from importlib.metadata import version
import torch
gpu = f"{torch.cuda.get_device_name(0)}, bf16 {torch.cuda.is_bf16_supported()}" if torch.cuda.is_available() else "none"
print(f"python {sys.version.split()[0]} ({sys.executable}); torch {torch.__version__} (CUDA {torch.version.cuda}); GPU: {gpu}")
print(", ".join(f"{name} {version(name)}" for name in ("transformers", "peft", "accelerate", "safetensors", "sacrebleu")))
site, missing = os.environ["GPU_CHECK_SITE"], []
for module, dist in (("rouge_score", "rouge-score"), ("nltk", "nltk"), ("gguf", "gguf"), ("bitsandbytes", "bitsandbytes")):
    try:
        path = importlib.import_module(module).__file__
    except Exception as exc:  # bitsandbytes without CUDA fails in more ways than ImportError
        print(f"{module}: cannot import: {type(exc).__name__}: {exc}")
        missing.append(module)
        continue
    print(f"{dist} {version(dist)} from {'the kit' if path.startswith(site) else path}")
import peftbench.pipeline.method_run  # everything a run imports
print(f"peftbench from {os.path.dirname(peftbench.__file__)}")
sys.exit(1 if missing else 0)
EOF

# Every run's metrics.json in one file: {run: {method: metrics}}.
read -r -d '' COLLECT <<'EOF'
import json, sys
from pathlib import Path
work, out = Path(sys.argv[1]), Path(sys.argv[2])
runs = {}
for path in sorted(work.glob("runs/*/*/metrics.json")):
    runs.setdefault(path.parent.parent.name, {})[path.parent.name] = json.loads(path.read_text())
out.write_text(json.dumps(runs, indent=1) + "\n")
print(f"{sum(map(len, runs.values()))} metrics.json of {len(runs)} runs in {out}")
EOF

RESULTS=()
FAILED=0
step() {  # step NAME LIMIT COMMAND...: time-limited, within the budget, logged, never fatal for the steps after it
    local name=$1 limit=$2 left=$((DEADLINE - SECONDS))
    shift 2
    if [ "$left" -lt 10 ]; then
        echo "== $name: skipped: the ${BUDGET} s budget is spent"
        RESULTS+=("$name: SKIPPED (out of time)")
        FAILED=1
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "== [$(date +%T)] $name (limit ${limit} s): ${*%%$'\n'*}"  # a program given as text: its first line
    local started=$SECONDS rc
    timeout -k 10 "$limit" "$@"
    rc=$?
    local took=$((SECONDS - started))
    echo "== $name: exit $rc after ${took} s"
    if [ "$rc" -eq 0 ]; then
        RESULTS+=("$name: ok in ${took} s")
        return
    fi
    FAILED=1
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        RESULTS+=("$name: TIMED OUT after ${took} s (limit ${limit} s)")
    else
        RESULTS+=("$name: FAILED (exit $rc) after ${took} s")
    fi
}

keep() {  # keep FILE NAME: copy a result into OUT, or say why it is missing
    if [ -f "$1" ]; then cp "$1" "$OUT/$2"; else echo "== $2: not written ($1 is missing)"; fi
}

model_dir() {  # model_dir SHAPE: a folder with the shape's config and the kit's tokenizer (random weights)
    local dir="$WORK/models/$1"
    mkdir -p "$dir" && cp "benchmarks/shapes/$1/config.json" "$KIT"/tokenizer/* "$dir/" && echo "$dir"
}

main() {
    local created=""
    if [ -z "${WORK:-}" ]; then
        WORK=$(mktemp -d "${TMPDIR:-/tmp}/peftbench-gpu-check.XXXXXX")
        created=$WORK
    fi
    # shellcheck disable=SC2064  # the folder is known now
    [ -n "$created" ] && trap "rm -rf '$created'" EXIT
    mkdir -p "$WORK"
    DEADLINE=$((SECONDS + BUDGET))
    export PYTHONPATH="$PWD/src:$WORK/site${PYTHONPATH:+:$PYTHONPATH}" GPU_CHECK_SITE="$WORK/site"
    export PEFTBENCH_CACHE="$WORK/cache" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 MPLBACKEND=Agg
    echo "gpu_check: $([ "$REHEARSE" = 1 ] && echo "CPU rehearsal" || echo "GPU check") of $(git rev-parse --short HEAD \
        2>/dev/null || echo 'this tree'), $(date -u +%Y-%m-%dT%H:%M:%SZ); budget ${BUDGET} s; work in $WORK"
    head -2 "$KIT/kit.txt"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

    step kit 60 "$PYTHON" -m pip install --quiet --no-index --no-deps --no-compile --target "$WORK/site" \
        "$KIT"/wheels/*.whl
    step environment 90 "$PYTHON" -c "$ENVIRONMENT"
    if [ "$REHEARSE" != 1 ] && ! "$PYTHON" -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
        echo "gpu_check: torch sees no CUDA GPU here; for the CPU rehearsal set GPU_CHECK_REHEARSE=1"
        return 2
    fi
    local small large
    small=$(model_dir "$SMALL_SHAPE") && large=$(model_dir "$LARGE_SHAPE") || return 2

    local run=("$PYTHON" -m peftbench run --dataset "$KIT/data.jsonl" --precision "$PRECISION" --force)
    step compare 200 "${run[@]}" --model "$small" --output "$WORK/runs/compare" --methods full,lora,ia3 \
        "${COMPARE_SIZES[@]}"
    keep "$WORK/runs/compare/summary.md" compare-summary.md
    step lora-large 120 "${run[@]}" --model "$large" --output "$WORK/runs/lora-large" --methods lora \
        "${LARGE_SIZES[@]}"
    if [ "$REHEARSE" = 1 ]; then
        echo "== qlora-large: skipped: QLoRA's 4-bit base needs a CUDA GPU (bitsandbytes); the rehearsal has none"
        RESULTS+=("qlora-large: skipped (no CUDA in the rehearsal)")
    else
        step qlora-large 100 "${run[@]}" --model "$large" --output "$WORK/runs/qlora-large" --methods lora \
            --quantize 4bit "${LARGE_SIZES[@]}"
    fi
    for name in lora-large qlora-large; do
        [ -f "$WORK/runs/$name/summary.md" ] && { echo "# $name"; cat "$WORK/runs/$name/summary.md"; }
    done >"$OUT/qlora-vs-lora.md"
    step dtype-check 120 "$PYTHON" benchmarks/dtype_check.py --model "$small" --dataset "$KIT/data.jsonl" \
        --precision "$PRECISION" --json "$OUT/dtype-check.json" "${DTYPE_ARGS[@]}"
    step bench-train 120 "$PYTHON" benchmarks/bench_train.py --model "$small" --dataset "$KIT/data.jsonl" \
        --variants a,b --json "$OUT/bench_train.json" "${TRAIN_SIZES[@]}"
    step bench-generate 90 "$PYTHON" benchmarks/bench_generate.py --model "$small" --dataset "$KIT/data.jsonl" \
        "${GENERATE_SIZES[@]}"
    if [ "$REHEARSE" != 1 ] && [ "$("$PYTHON" -c "import torch; print(torch.cuda.device_count())")" -ge 2 ]; then
        step ddp 120 "$PYTHON" -m torch.distributed.run --nproc-per-node 2 "${run[@]:1}" --model "$small" \
            --output "$WORK/runs/ddp" --methods lora
    else
        echo "== ddp: skipped: one GPU or none (two CPU processes run it in tests/test_parallel.py)"
    fi
    "$PYTHON" -c "$COLLECT" "$WORK" "$OUT/results.json"

    echo "== summary: $((SECONDS)) s in all (budget ${BUDGET} s for the steps)"
    printf '  %s\n' "${RESULTS[@]}"
    echo "== files in $OUT:"
    (cd "$OUT" && find . -type f -printf '  %9s  %P\n' | sort -k2)
    [ "$(find "$OUT" -type f | wc -l)" -le 8 ] || { echo "gpu_check: more than 8 files in $OUT"; FAILED=1; }
    return "$FAILED"
}

main 2>&1 | tee "$OUT/gpu-check.log"
exit "${PIPESTATUS[0]}"
