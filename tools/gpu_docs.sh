#!/usr/bin/env bash
# Build the docs in full mode on a machine with a CUDA GPU, and keep what they measured.
#
#   tools/gpu_docs.sh [--dry-run | --install-check] [--wheels DIR] [OUT_DIR]
#
# For a machine that has torch (with CUDA) and transformers but no sphinx and no internet:
#   1. installs the sphinx stack from wheels (tools/gpu_wheels.txt, fetched beforehand with
#      tools/fetch_gpu_wheels.sh into .whl/) with `pip install --no-index --no-deps --target`
#      into a temporary folder put on PYTHONPATH (nothing is installed into the environment);
#   2. builds the docs with BATCH_INFERENCE_MODE=full (every tutorial runs; bert-base is
#      randomly initialised when its weights are not cached: the page says which ran), with
#      the build bounded to BUILD_S seconds (default 450) so the whole run stays within 8 min;
#   3. writes into OUT_DIR ($OUT if set, else the argument): nvidia-smi before and after, GPU
#      samples during the build, the build log, the BERT page's table (bert_table.md), the page,
#      the results JSON (results/), and summary.md.
# --dry-run: says what it would do, checks the wheels (for the GPU machine's Python) and the
# paths, and exits 0 when the real run would have what it needs (no GPU here is not fatal).
# --install-check: installs the wheels into a temporary folder and imports the docs stack from
# it with this Python (needs wheels for this Python; no GPU), then stops.
# Environment: PYTHON (default python3), BUILD_S, GPU_DOCS_SITE (default a fresh mktemp -d),
# GPU_WHEELS_PYTHON_VERSION (the GPU machine's Python, default 3.12: what --dry-run checks),
# GPU_WHEELS_LIST (default tools/gpu_wheels.txt).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
BUILD_S="${BUILD_S:-450}"
WHEELS="$ROOT/.whl"
DRY=0
INSTALL_ONLY=0
TARGET_TAG="cp$(echo "${GPU_WHEELS_PYTHON_VERSION:-3.12}" | tr -d .)"
OUT_DIR="${OUT:-}"
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY=1 ;;
        --install-check) INSTALL_ONLY=1 ;;
        --wheels) WHEELS="$2"; shift ;;
        -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
        -*) echo "gpu_docs: unknown option $1 (see --help)" >&2; exit 2 ;;
        *) OUT_DIR="$1" ;;
    esac
    shift
done
HELPER="$ROOT/tools/gpu_docs_helper.py"
LIST="${GPU_WHEELS_LIST:-$ROOT/tools/gpu_wheels.txt}"
say() { echo "gpu_docs: $*"; }

# ---------------------------------------------------------------- checks (every mode)
problems=0
for path in docs/conf.py docs/_ext/bi_checks.py tutorials/plot_bert_embedding.py \
        batch_inference/__init__.py benchmarks/__init__.py tools/gpu_wheels.txt \
        tools/gpu_docs_helper.py; do
    if [ ! -e "$ROOT/$path" ]; then say "MISSING: $ROOT/$path"; problems=$((problems + 1)); fi
done
if ! command -v "$PYTHON" >/dev/null 2>&1; then
    say "MISSING: $PYTHON (set PYTHON=...)"; exit 1
fi
PYTAG="$("$PYTHON" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
# The real run installs the wheels into this Python: they must fit it. The dry run checks
# them against the GPU machine's Python, whatever runs here.
TAG="$PYTAG"
if [ "$DRY" = 1 ]; then TAG="$TARGET_TAG"; fi
"$PYTHON" "$HELPER" wheels --list "$LIST" --dir "$WHEELS" --python-tag "$TAG" \
    || problems=$((problems + 1))
if [ "$DRY" = 1 ] && [ "$PYTAG" != "$TARGET_TAG" ]; then
    say "note: $PYTHON is $PYTAG here; the wheels were checked for $TARGET_TAG (the GPU machine)"
fi
CUDA="$("$PYTHON" -c 'import torch; ok = torch.cuda.is_available(); print(f"torch {torch.__version__}, CUDA available: {ok}" + (f" ({torch.cuda.get_device_name(0)})" if ok else ""))' 2>/dev/null || echo "no torch")"
say "found: $CUDA"
TRANSFORMERS="$("$PYTHON" -c 'import transformers; print(transformers.__version__)' \
    2>/dev/null || echo missing)"
say "found: transformers $TRANSFORMERS"
SMI="$(command -v nvidia-smi || echo missing)"
say "found: nvidia-smi $SMI"
if [ "$DRY" = 0 ] && [ "$INSTALL_ONLY" = 0 ]; then
    case "$CUDA" in
        *"available: True"*) ;;
        *) say "MISSING: torch with CUDA"; problems=$((problems + 1)) ;;
    esac
    if [ "$TRANSFORMERS" = missing ]; then say "MISSING: transformers"; problems=$((problems + 1)); fi
    if [ -z "$OUT_DIR" ]; then
        say "MISSING: an output folder (\$OUT or an argument)"; problems=$((problems + 1))
    fi
fi

if [ "$DRY" = 1 ]; then
    cat <<PLAN
gpu_docs: dry run; the real run would:
  1. install the $(grep -c '==' "$LIST") wheels of $LIST from $WHEELS:
       $PYTHON -m pip install --no-index --no-deps --target \${GPU_DOCS_SITE:-\$(mktemp -d)} $WHEELS/*.whl
     then import sphinx, sphinx_gallery, myst_parser, furo, pandas, matplotlib, tqdm, zmq, fastapi, uvicorn, httpx, prometheus_client from it,
     running everything with PYTHONPATH=<that folder>:$ROOT
  2. nvidia-smi > ${OUT_DIR:-OUT_DIR}/nvidia-smi.txt; sample GPU use every 2 s during the build
  3. clean docs/_build docs/auto_tutorials docs/_generated docs/api, then, bounded to ${BUILD_S} s:
       BATCH_INFERENCE_MODE=full HF_HUB_OFFLINE=1 $PYTHON -m sphinx -W --keep-going -b html docs docs/_build/html
  4. $PYTHON tools/gpu_docs_helper.py report --out ${OUT_DIR:-OUT_DIR}
     (bert_table.md, bert_page.html, results/*.json, summary.md; build.log beside them)
PLAN
    if [ "$problems" -gt 0 ]; then say "dry run: $problems problem(s) above"; exit 1; fi
    say "dry run: wheels and paths in order"
    exit 0
fi
if [ "$problems" -gt 0 ]; then say "$problems problem(s) above: not building"; exit 1; fi

# ---------------------------------------------------------------- install
START_S=$SECONDS
if [ "$INSTALL_ONLY" = 1 ] && [ -z "$OUT_DIR" ]; then OUT_DIR="$(mktemp -d /tmp/bi-gpu-out.XXXXXX)"; fi
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
SITE="${GPU_DOCS_SITE:-$(mktemp -d /tmp/bi-gpu-site.XXXXXX)}"
say "installing the wheels into $SITE"
if "$PYTHON" -m pip --version >/dev/null 2>&1; then
    "$PYTHON" -m pip install --no-index --no-deps --no-compile --quiet --target "$SITE" \
        "$WHEELS"/*.whl > "$OUT_DIR/install.log" 2>&1 \
        || { cat "$OUT_DIR/install.log"; say "the wheels did not install"; exit 1; }
else  # no pip: a wheel is a zip of its import tree
    "$PYTHON" -c 'import sys, zipfile; [zipfile.ZipFile(w).extractall(sys.argv[1]) for w in sys.argv[2:]]' \
        "$SITE" "$WHEELS"/*.whl > "$OUT_DIR/install.log" 2>&1
fi
export PYTHONPATH="$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
"$PYTHON" -c '
import importlib, sys
for name in ("sphinx", "sphinx_gallery", "myst_parser", "furo", "pandas", "matplotlib", "tqdm",
             "zmq", "fastapi", "uvicorn", "httpx", "prometheus_client"):
    module = importlib.import_module(name)
    where = "the wheels" if module.__file__.startswith(sys.argv[1]) else module.__file__
    version = getattr(module, "__version__", "")
    print(f"gpu_docs: import {name} {version} from {where}")
' "$SITE" || { say "the docs stack does not import from $SITE"; exit 1; }
if [ "$INSTALL_ONLY" = 1 ]; then say "install check passed ($SITE)"; exit 0; fi

# ---------------------------------------------------------------- build and report
export BATCH_INFERENCE_MODE=full HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MPLBACKEND=Agg
{ echo "$CUDA"; echo "transformers $TRANSFORMERS"; echo "python $PYTAG"; \
    git -C "$ROOT" log -1 --format='commit %H %s' 2>/dev/null || true; } > "$OUT_DIR/environment.txt"
nvidia-smi > "$OUT_DIR/nvidia-smi.txt" 2>&1 || true
SAMPLER=""
if [ "$SMI" != missing ]; then
    nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used,power.draw --format=csv \
        -l 2 > "$OUT_DIR/nvidia-smi-samples.csv" 2>&1 &
    SAMPLER=$!
fi
cd "$ROOT"
rm -rf docs/_build docs/auto_tutorials docs/_generated docs/api docs/sg_execution_times.rst
say "building the docs in full mode (at most $BUILD_S s); log: $OUT_DIR/build.log"
set +e
timeout -k 10 "$BUILD_S" "$PYTHON" -m sphinx -W --keep-going -b html docs docs/_build/html \
    > "$OUT_DIR/build.log" 2>&1
BUILD_RC=$?
set -e
if [ -n "$SAMPLER" ]; then kill "$SAMPLER" 2>/dev/null || true; fi
nvidia-smi > "$OUT_DIR/nvidia-smi-after.txt" 2>&1 || true
tail -n 30 "$OUT_DIR/build.log"
if [ "$BUILD_RC" = 124 ]; then say "the build passed $BUILD_S s and was stopped"; fi
REPORT_RC=0
"$PYTHON" "$HELPER" report --html docs/_build/html --results docs/_generated \
    --out "$OUT_DIR" || REPORT_RC=$?
say "build exit $BUILD_RC, report exit $REPORT_RC, $((SECONDS - START_S)) s; files in $OUT_DIR"
if [ -f "$OUT_DIR/bert_table.md" ]; then cat "$OUT_DIR/bert_table.md"; fi
[ "$BUILD_RC" = 0 ] && [ "$REPORT_RC" = 0 ]
