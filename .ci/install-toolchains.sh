#!/usr/bin/env bash
# Install the compilers and interpreters that teeny-bench's humaneval-mul evaluator runs programs with:
# a JDK (+ javatuples, which MultiPL-E's Java prompts import), g++, node, PHP, Mono's C# compiler and
# runtime, and TypeScript. Idempotent and quiet; does nothing when everything is already there.
# Needs root (or sudo) for apt-get, else it warns and installs nothing from apt (the missing languages are
# then skipped by humaneval-mul, never failed); TypeScript goes into ~/.local when the npm prefix is not ours.
set -euo pipefail

want_apt=()
have() { command -v "$1" >/dev/null 2>&1; }

have javac || want_apt+=(default-jdk-headless)
[ -f /usr/share/java/javatuples.jar ] || want_apt+=(libjavatuples-java)
have g++ || want_apt+=(g++)
have node || want_apt+=(nodejs)
have npm || want_apt+=(npm)
have php || want_apt+=(php-cli)
have mcs || want_apt+=(mono-mcs)
have mono || want_apt+=(mono-runtime)
[ -n "$(ls /usr/lib/mono/4.5/System.Numerics.dll 2>/dev/null)" ] || want_apt+=(libmono-system-numerics4.0-cil)

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
if [ ${#want_apt[@]} -gt 0 ]; then
    if [ -n "$SUDO" ] && ! have sudo; then
        echo "install-toolchains: warning: not root and no sudo; not installing ${want_apt[*]}" >&2
    else
        echo "install-toolchains: apt-get install ${want_apt[*]}"
        export DEBIAN_FRONTEND=noninteractive
        $SUDO apt-get update -qq >/dev/null
        $SUDO apt-get install -y -qq --no-install-recommends "${want_apt[@]}" >/dev/null
    fi
fi

if ! have tsc && have npm; then
    echo "install-toolchains: npm install -g typescript"
    if ! npm install -g --silent --no-audit --no-fund typescript@5 >/dev/null 2>&1; then
        # Not allowed to write the global prefix: install for this user (put ~/.local/bin on PATH).
        npm install -g --silent --no-audit --no-fund --prefix "$HOME/.local" typescript@5 >/dev/null
        echo "install-toolchains: tsc is in $HOME/.local/bin; add it to PATH" >&2
    fi
fi

for tool in javac java g++ node php mcs mono tsc; do
    have "$tool" || echo "install-toolchains: warning: $tool is still missing" >&2
done
