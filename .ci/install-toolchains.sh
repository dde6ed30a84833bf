#!/usr/bin/env bash
# Install the compilers and interpreters that teeny-bench's humaneval-mul evaluator runs programs with:
# a JDK (+ javatuples, which MultiPL-E's Java prompts import), g++, node, PHP, Mono's C# compiler and
# runtime, and TypeScript. Idempotent and quiet; does nothing when everything is already there.
# Needs root (or sudo) for apt-get; TypeScript goes into a user-level npm prefix when npm is not root.
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

if [ ${#want_apt[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "install-toolchains: apt-get install ${want_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq >/dev/null
    $SUDO apt-get install -y -qq --no-install-recommends "${want_apt[@]}" >/dev/null
fi

if ! have tsc; then
    echo "install-toolchains: npm install -g typescript"
    npm install -g --silent --no-audit --no-fund typescript@5 >/dev/null 2>&1 \
        || npm install -g --silent --no-audit --no-fund --prefix "$HOME/.local" typescript@5 >/dev/null
fi

for tool in javac java g++ node php mcs mono tsc; do
    have "$tool" || echo "install-toolchains: warning: $tool is still missing" >&2
done
