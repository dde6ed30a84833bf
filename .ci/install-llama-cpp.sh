#!/usr/bin/env bash
# Install llama-cpp-python (the version teeny-gguf pins) into the active Python.
# A wheel cached in ${TEENY_WHEEL_CACHE:-~/.cache/teeny-wheels} is reused; otherwise it is built from
# source once, portable (GGML_NATIVE=OFF: no -march=native, so the cached wheel runs on any x86-64 CPU
# the cache may move to), saved to the cache, and installed. The build takes about 5 minutes on 2 cores.
set -euo pipefail

VERSION="0.3.36"  # keep in step with teeny-gguf/pyproject.toml
CACHE="${TEENY_WHEEL_CACHE:-$HOME/.cache/teeny-wheels}"
PYTHON="${PYTHON:-python}"

installed=$("$PYTHON" -c "import importlib.metadata as m; print(m.version('llama_cpp_python'))" 2>/dev/null || true)
if [ "$installed" = "$VERSION" ]; then
    echo "llama-cpp-python $VERSION already installed"
    exit 0
fi

mkdir -p "$CACHE"
wheel=$(ls "$CACHE"/llama_cpp_python-"$VERSION"-*.whl 2>/dev/null | head -n 1 || true)
if [ -z "$wheel" ]; then
    echo "building llama-cpp-python $VERSION from source (portable, GGML_NATIVE=OFF) ..."
    build=$(mktemp -d)
    trap 'rm -rf "$build"' EXIT
    CMAKE_ARGS="-DGGML_NATIVE=OFF ${CMAKE_ARGS:-}" "$PYTHON" -m pip wheel -q --no-deps \
        --no-binary llama-cpp-python "llama-cpp-python==$VERSION" -w "$build"
    built=$(ls "$build"/llama_cpp_python-"$VERSION"-*.whl | head -n 1)
    # copy then rename inside the cache, so a concurrent or killed run never sees a partial wheel
    cp "$built" "$CACHE/.$(basename "$built").partial"
    mv "$CACHE/.$(basename "$built").partial" "$CACHE/$(basename "$built")"
    wheel="$CACHE/$(basename "$built")"
else
    echo "using cached wheel $wheel"
fi

"$PYTHON" -m pip install -q --no-deps "$wheel"
# its small pure-Python dependencies (numpy comes with teeny-core's own pins)
"$PYTHON" -m pip install -q "diskcache>=5.6.1" "jinja2>=2.11.3" "typing-extensions>=4.5.0"
echo "llama-cpp-python $VERSION installed from $wheel"
