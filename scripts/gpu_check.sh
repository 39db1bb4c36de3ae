#!/usr/bin/env bash
# The GPU check of issue 17, in one command: the decode loop at Qwen3-8B shapes on random bf16
# weights (scripts/gpu_check.py: AR tokens/s of transformers' generate and of our loop, verify
# forwards eager / static cache / CUDA graph, the oracle drafter at tau 4 and 8 against AR and the
# ideal, non-model time per cycle, the Domino head per block against its HBM floor), then the GPU
# tests and the pytest-benchmark micro-benchmarks. One JSON + one log:
#
#   scripts/gpu_check.sh OUT_DIR [gpu_check.py options]     e.g. --layers 12, --max-new 256, --skip domino
#   scripts/gpu_check.sh OUT_DIR --tiny                     any machine (CPU): tiny shapes, tests the script
#
#   OUT_DIR/gpu_check.json   measurements + "pytest" (passed / failed / skipped ids) + "benchmarks"
#   OUT_DIR/gpu_check.log    everything printed
#
# On the device tool's H200 (no network there; its image has torch, transformers, triton, pytest and
# pytest-benchmark but no omegaconf, which the tests' recipe loading needs):
#   1. once, here, in the repo root (wheels/ is in .gitignore, so it travels only when carried):
#        python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#          --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d wheels \
#          omegaconf==2.4.0 antlr4-python3-runtime==4.13.2
#   2. one call (the script stays inside ~9 minutes: each step has its own timeout below):
#        run(command="bash scripts/gpu_check.sh $OUT", carry=["wheels"], timeout_s=600)
#      then read $OUT/gpu_check.json (files_at) and give_back.
# The measurement alone, without tests or benchmarks: GPU_CHECK_ONLY=1 bash scripts/gpu_check.sh $OUT
# Other test files: GPU_CHECK_TESTS="tests/a.py tests/b.py"; no benchmarks: GPU_CHECK_BENCH=0
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:?usage: scripts/gpu_check.sh OUT_DIR [gpu_check.py options]}"
shift
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1

PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
unset TRITON_INTERPRET  # compiled Triton on a GPU (tests/conftest.py sets the interpreter only without CUDA)
TINY=0
for a in "$@"; do [ "$a" = "--tiny" ] && TINY=1; done

# carried wheels (omegaconf) into a private folder; then our package with its entry points
if compgen -G "wheels/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu_check_site wheels/*.whl \
    && export PYTHONPATH="/tmp/gpu_check_site${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! "$PY" -c "import specforge_oracle" 2>/dev/null; then  # not installed here (the device's image)
  "$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e . \
    || echo "gpu_check: 'pip install -e .' failed: plugins import from the checkout, tests that load recipes may fail"
fi
export PYTHONPATH="$PWD:$PWD/plugins${PYTHONPATH:+:$PYTHONPATH}"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem --format=csv

start=$(date +%s)
echo "== gpu_check.py $*"
timeout "${GPU_CHECK_MEASURE_S:-300}" "$PY" scripts/gpu_check.py --out "$OUT" "$@"
echo "gpu_check.py exit $? after $(( $(date +%s) - start )) s"
[ "${GPU_CHECK_ONLY:-0}" = 1 ] && exit 0

if [ "$TINY" = 1 ]; then  # CPU: only the tests of this path (the CUDA cases skip, saying why)
  TESTS="tests/test_static_cache.py tests/test_gpu_path.py"
  BENCH="benchmarks/bench_verify.py"
else
  TESTS="tests/test_static_cache.py tests/test_gpu_path.py tests/test_domino_kernels.py tests/test_oracle.py"
  BENCH="benchmarks/"
fi
TESTS="${GPU_CHECK_TESTS:-$TESTS}"
echo "== GPU tests: $TESTS"
timeout "${GPU_CHECK_TESTS_S:-110}" "$PY" -m pytest -q -p no:cacheprovider -rs $TESTS --junitxml=/tmp/gpu_check_tests.xml
echo "tests exit $? after $(( $(date +%s) - start )) s"
"$PY" scripts/gpu_check.py --out "$OUT" --merge-pytest /tmp/gpu_check_tests.xml

[ "${GPU_CHECK_BENCH:-1}" = 0 ] && exit 0
echo "== benchmarks: $BENCH"
timeout "${GPU_CHECK_BENCH_S:-110}" "$PY" -m pytest -q -p no:cacheprovider $BENCH --benchmark-enable \
  --benchmark-json=/tmp/gpu_check_bench.json
echo "benchmarks exit $? after $(( $(date +%s) - start )) s"
"$PY" scripts/gpu_check.py --out "$OUT" --merge-benchmarks /tmp/gpu_check_bench.json
echo "== done in $(( $(date +%s) - start )) s: $OUT/gpu_check.json"
