#!/usr/bin/env bash
# Download the small pure-Python wheels benchmarks/gpu_check.sh installs on a GPU machine without network into
# benchmarks/gpu_wheels/ (git-ignored; carry it to the machine with the working tree). Versions are the ones
# installed in ./.venv (what the tests pass with here); torch, transformers, their own dependencies and NVML
# (nvidia-ml-py) are the machine's and never downloaded. Wheels for any platform only (py3-none-any), plus psutil's abi3 Linux wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
DEST=benchmarks/gpu_wheels
PURE=(pluggy click rich markdown-it-py mdurl pygments accelerate gguf pytest pytest-timeout iniconfig
      setuptools)
specs=()
for name in "${PURE[@]}"; do
    version=$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name" 2>/dev/null) ||
        { echo "gpu_wheels: $name is not installed in $PY (run .ci/install first)"; exit 2; }
    specs+=("$name==$version")
done
psutil=$("$PY" -c "import importlib.metadata as m; print(m.version('psutil'))")
mkdir -p "$DEST"
"$PY" -m pip download -q --no-deps --only-binary=:all: --platform any --python-version 3.12 --implementation py \
    --abi none -d "$DEST" "${specs[@]}"
"$PY" -m pip download -q --no-deps --only-binary=:all: --platform manylinux2014_x86_64 --python-version 3.12 \
    -d "$DEST" "psutil==$psutil"
echo "gpu_wheels: $(ls "$DEST" | wc -l) wheels, $(du -sh "$DEST" | cut -f1) in $DEST"
