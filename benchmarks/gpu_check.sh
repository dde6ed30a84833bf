#!/usr/bin/env bash
# The GPU check, in one go on a machine with an NVIDIA GPU: a fresh venv with vllm (which brings its own
# CUDA torch), Teeny's packages, the CUDA-marked tests, and benchmarks/vllm_bench.py on the demo model.
# Everything it finds is written under $OUT (default benchmarks/results/gpu).
#
#   bash benchmarks/gpu_check.sh                       # needs PyPI (or WHEELHOUSE=dir of wheels, offline)
#   OUT=/tmp/out VENV=/tmp/v bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu}
VENV=${VENV:-/tmp/teeny-gpu-venv}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1
start=$(date +%s)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.csv" || { echo "no GPU"; exit 1; }

pip_args=(-q)
[ -n "${WHEELHOUSE:-}" ] && pip_args+=(--no-index --find-links "$WHEELHOUSE")
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV" && "$VENV/bin/python" -m pip install "${pip_args[@]}" --upgrade pip
fi
. "$VENV/bin/activate"
export PIP_DISABLE_PIP_VERSION_CHECK=1
# vllm first: it pins the CUDA torch every other package then shares (never the CPU torch of the CI).
python -m pip install "${pip_args[@]}" vllm==0.33 || { echo "gpu_check: could not install vllm==0.33"; exit 1; }
python -m pip install "${pip_args[@]}" -e ".[models,demo,test]" -e ./teeny-gptq -e ./teeny-awq -e ./teeny-gguf \
    -e ./teeny-bench -e ./plugins/teeny-stats -e ./plugins/teeny-vllm || exit 1
python -m pip freeze > "$OUT/pip-freeze.txt"
echo "gpu_check: installed in $(( $(date +%s) - start ))s"
teeny plugins | tee "$OUT/plugins.txt"

# The CUDA-marked tests of every package (vLLM runtime, GPTQ/AWQ CUDA paths, ...).
python -m pytest -q -m cuda -rs --junitxml="$OUT/pytest-cuda.xml" | tee "$OUT/pytest-cuda.txt"
tests=${PIPESTATUS[0]}

# A small benchmark: the demo model in vLLM as published (GGUF Q4_K_M) and its float copy.
python benchmarks/vllm_bench.py --out "$OUT/vllm_bench.md"
bench=$?
echo "gpu_check: tests exit $tests, benchmark exit $bench, $(( $(date +%s) - start ))s in all"
exit $(( tests || bench ))
