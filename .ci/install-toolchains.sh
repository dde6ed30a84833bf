#!/usr/bin/env bash
# Install the compilers and interpreters that teeny-bench's humaneval-mul evaluator runs programs with:
# a JDK (+ javatuples, which MultiPL-E's Java prompts import), g++, node, PHP, Mono's C# compiler and
# runtime, and TypeScript. Idempotent and quiet; does nothing when everything is already there.
# Needs root (or sudo) for apt-get, else it warns and installs nothing from apt (the missing languages are
# then skipped by humaneval-mul, never failed); TypeScript goes into ~/.local when the npm prefix is not ours.
# A toolchain that cannot be installed (no apt, no network, a package missing) is a warning, never a failure:
# this script exits 0 so that .ci/install goes on.
set -uo pipefail

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

warn() { echo "install-toolchains: warning: $*" >&2; }
apt_install() { $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1; }

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
if [ ${#want_apt[@]} -gt 0 ]; then
    if [ -n "$SUDO" ] && ! have sudo; then
        warn "not root and no sudo; not installing ${want_apt[*]}"
    elif ! have apt-get; then
        warn "no apt-get; not installing ${want_apt[*]}"
    else
        echo "install-toolchains: apt-get install ${want_apt[*]}"
        export DEBIAN_FRONTEND=noninteractive
        $SUDO apt-get update -qq >/dev/null 2>&1 || warn "apt-get update failed (exit $?); trying the install anyway"
        if ! apt_install "${want_apt[@]}"; then
            # One unavailable package fails the whole command: install the others one by one.
            for package in "${want_apt[@]}"; do
                apt_install "$package" || warn "apt-get install $package failed (exit $?)"
            done
        fi
    fi
fi

if ! have tsc && have npm; then
    echo "install-toolchains: npm install -g typescript"
    if ! npm install -g --silent --no-audit --no-fund typescript@5 >/dev/null 2>&1; then
        # Not allowed to write the global prefix: install for this user (put ~/.local/bin on PATH).
        if npm install -g --silent --no-audit --no-fund --prefix "$HOME/.local" typescript@5 >/dev/null 2>&1; then
            echo "install-toolchains: tsc is in $HOME/.local/bin; add it to PATH" >&2
        else
            warn "npm install -g typescript failed"
        fi
    fi
fi

missing=()
for tool in javac java g++ node php mcs mono tsc; do
    have "$tool" || missing+=("$tool")
done
[ ${#missing[@]} -eq 0 ] || warn "still missing: ${missing[*]} (humaneval-mul skips those languages, never fails them)"
exit 0
