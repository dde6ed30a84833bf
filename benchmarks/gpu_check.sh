#!/usr/bin/env bash
# The GPU check, in one go, on a GPU machine as it comes: no network, its own python/torch/transformers.
# Teeny's packages are installed into that python with --no-deps --no-build-isolation -e; the small pure-Python
# wheels Teeny needs besides (pluggy, click, rich, accelerate, gguf, pytest, ...) come from benchmarks/gpu_wheels/
# (made here by `bash benchmarks/gpu_wheels.sh`, carried with the working tree) and only where missing. Then the
# CUDA-relevant tests under a time limit, and benchmarks/gpu_bench.py (14B shape, built in GPU memory), which
# writes benchmarks/results/gpu.md and gpu.json. Aims to finish within 8 minutes; logs go to $OUT.
#
#   bash benchmarks/gpu_check.sh                     # PYTHON=python3 TEST_LIMIT=140 BENCH_LIMIT=290 OUT=...
#
# Requirements stated and enforced before anything is installed: Python >= 3.11, torch with CUDA and a device,
# transformers >= 4.50 (the floor in pyproject.toml; 5.17 is what the H200 machine has).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-benchmarks/results/gpu-check}
TEST_LIMIT=${TEST_LIMIT:-140}
BENCH_LIMIT=${BENCH_LIMIT:-290}
WHEELS=benchmarks/gpu_wheels
TRANSFORMERS_FLOOR=4.50
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1
start=$(date +%s)
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INDEX=1 TEENY_NO_BAR=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv ||
    { echo "gpu_check: no GPU (nvidia-smi)"; exit 1; }

"$PY" - "$TRANSFORMERS_FLOOR" <<'PYEOF' || exit 1
import sys
floor = tuple(int(x) for x in sys.argv[1].split("."))
if sys.version_info < (3, 11):
    sys.exit(f"gpu_check: Python {sys.version.split()[0]}, Teeny needs >= 3.11")
try:
    import torch, transformers
except ImportError as exc:
    sys.exit(f"gpu_check: {exc.name} is not installed in this python; the machine's torch/transformers are used")
if not torch.cuda.is_available():
    sys.exit(f"gpu_check: torch {torch.__version__} sees no CUDA device")
have = tuple(int(x) for x in transformers.__version__.split(".")[:2] if x.isdigit())
if have < floor:
    sys.exit(f"gpu_check: transformers {transformers.__version__}, Teeny needs >= {sys.argv[1]}")
print(f"gpu_check: python {sys.version.split()[0]}, torch {torch.__version__}, transformers "
      f"{transformers.__version__}, {torch.cuda.get_device_name()}")
PYEOF

# Wheels only for what this python lacks: never replace the machine's own packages.
for wheel in "$WHEELS"/*.whl; do
    [ -e "$wheel" ] || { echo "gpu_check: no wheels in $WHEELS (run benchmarks/gpu_wheels.sh where pip reaches PyPI)"
                         break; }
    name=$(basename "$wheel" | cut -d- -f1)
    "$PY" -c "import importlib.metadata as m, sys; m.version(sys.argv[1])" "$name" 2>/dev/null && continue
    "$PY" -m pip install -q --no-deps "$wheel" || exit 1
done
"$PY" -m pip install -q --no-deps --no-build-isolation -e . -e ./teeny-gptq -e ./teeny-awq -e ./teeny-gguf \
    -e ./teeny-bench -e ./plugins/teeny-stats -e ./plugins/teeny-vllm || exit 1
"$PY" -m pip freeze > "$OUT/pip-freeze.txt"
"$PY" -c "from teeny_core.cli import main; main()" plugins > "$OUT/plugins.txt" 2>&1
echo "gpu_check: installed in $(( $(date +%s) - start ))s"

# The CUDA-marked tests of every package, then the runtime/quantizer files that take a device option.
FILES=(tests/test_packed_runtime.py tests/test_runtime_choice.py tests/test_rtn_fidelity_reference.py
       teeny-gptq/tests/test_gptq_quantizer.py teeny-gptq/tests/test_gptq_streaming.py
       teeny-awq/tests/test_awq_checkpoint.py teeny-awq/tests/test_awq_streaming.py)
timeout "$TEST_LIMIT" bash -c '"$0" -m pytest -q -rs -p no:cacheprovider --timeout 120 -m cuda \
        --continue-on-collection-errors --junitxml="$1/pytest-cuda.xml" \
        tests teeny-gptq/tests teeny-awq/tests plugins/teeny-vllm/tests; a=$?
    "$0" -m pytest -q -rs -p no:cacheprovider --timeout 120 --junitxml="$1/pytest-device.xml" "${@:2}"; b=$?
    exit $(( a || b ))' "$PY" "$OUT" "${FILES[@]}"
tests=$?
echo "gpu_check: tests exit $tests after $(( $(date +%s) - start ))s"

# GPTQ and AWQ get 90 s each: one that does not finish is recorded as such, the other figures stay.
timeout "$BENCH_LIMIT" "$PY" benchmarks/gpu_bench.py --device cuda --quant-timeout 90 --out benchmarks/results
bench=$?
cp -f benchmarks/results/gpu.json benchmarks/results/gpu.md "$OUT"/ 2>/dev/null
echo "gpu_check: tests exit $tests, benchmark exit $bench, $(( $(date +%s) - start ))s in all"
exit $(( tests || bench ))
