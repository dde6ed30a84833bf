"""The compilers and interpreters HumanEval-Mul programs run with, found on this machine.

Each language has a :class:`Toolchain`: the binaries it needs (looked up on ``PATH`` when detected), how a
program is built and run inside the sandbox, and the resource limits that toolchain needs. JVMs and V8
reserve far more address space than they use, so Java gets a capped heap, class space and code cache
(and a larger ``RLIMIT_AS``), and the TypeScript compiler (node) gets a 4 GiB address-space limit.

Compiled languages compile and run in the same sandboxed process tree: a small ``/bin/sh`` driver runs
the compiler, and on failure prints :data:`COMPILE_ERROR_MARKER` and the compiler's messages to stderr
and exits 1; otherwise it ``exec``s the program. Java uses the JDK's single-file source launcher
(``java Problem.java``: compile in memory, then run, in one JVM start), which reports compile errors
with the line ``error: compilation failed``.

:func:`prepared` speeds the slow starters up with per-machine caches built once from the toolchain's own
files (never from model code), under ``$TEENY_CACHE_DIR`` (default ``~/.cache/teeny``)``/toolchains``: a
precompiled ``<bits/stdc++.h>`` force-included into every C++ program (MultiPL-E's C++ prompts include it
anyway; 5x less compile time), and a JVM class-data-sharing archive of the Java compiler's classes.

Set ``TEENY_JAVATUPLES_JAR`` to the javatuples jar when it is not in ``/usr/share/java`` (MultiPL-E's
Java prompts import ``org.javatuples``).
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from teeny_core import TeenyError

GiB = 1 << 30

LANGUAGES = ("python", "java", "cpp", "cs", "js", "ts", "php", "sh")
DISPLAY_NAMES = {"python": "Python", "java": "Java", "cpp": "C++", "cs": "C#", "js": "JavaScript",
                 "ts": "TypeScript", "php": "PHP", "sh": "Bash"}
_ALIASES = {"py": "python", "python3": "python", "c++": "cpp", "cxx": "cpp", "csharp": "cs", "c#": "cs",
            "javascript": "js", "node": "js", "typescript": "ts", "bash": "sh", "shell": "sh"}

COMPILE_ERROR_MARKER = "@@teeny: compilation failed@@"
JAVA_COMPILE_ERROR = "error: compilation failed"
# JVM flags that keep a JVM inside a few GiB of address space and start it fast (C1 only, serial GC).
JAVA_FLAGS = ("-Xmx512m", "-Xss8m", "-XX:CompressedClassSpaceSize=64m", "-XX:ReservedCodeCacheSize=64m",
              "-XX:MaxMetaspaceSize=256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
              "-XX:CICompilerCount=1", "-Xshare:auto", "-Dfile.encoding=UTF-8")
CPP_FLAGS = ("-std=c++17",)
# Numeric libraries a Python solution may import start one thread, so RLIMIT_NPROC and RLIMIT_AS hold.
ONE_THREAD = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
TSC_FLAGS = ("--target", "es2022", "--lib", "es2022,dom", "--skipLibCheck", "--pretty", "false")


def canonical_language(name: str) -> str:
    """``"C++"`` -> ``"cpp"``; a one-line error for an unknown language."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in LANGUAGES:
        raise TeenyError(f"unknown language {name!r}; expected one of {', '.join(LANGUAGES)} "
                         f"(or {', '.join(sorted(_ALIASES))})")
    return key


@dataclasses.dataclass
class Toolchain:
    """How one language's programs are built and run, and whether this machine can do it."""

    language: str
    source: str  # the file name the program is written to
    run: list[str]  # argv that runs the (compiled) program, in the program's directory
    compile: list[str] | None = None  # argv that compiles the source first, if any
    binaries: dict[str, str | None] = dataclasses.field(default_factory=dict)  # tool -> path (None: missing)
    files: dict[str, str] = dataclasses.field(default_factory=dict)  # required non-binary files -> path
    memory_bytes: int = 2 * GiB
    processes: int = 64
    compile_seconds: float = 30.0  # extra CPU/wall budget for the compile step
    compile_error_markers: tuple[str, ...] = (COMPILE_ERROR_MARKER,)
    assertion_markers: tuple[str, ...] = ()  # stderr text meaning a test assertion failed, even on exit 0
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    readable: tuple[str, ...] = ()  # extra directories the program must be able to read (toolchain caches)

    @property
    def name(self) -> str:
        return DISPLAY_NAMES[self.language]

    @property
    def missing(self) -> list[str]:
        """What is not installed: binary names and required files."""
        return ([tool for tool, path in self.binaries.items() if not path]
                + [what for what, path in self.files.items() if not path])

    @property
    def available(self) -> bool:
        return not self.missing

    def job(self, program: str) -> tuple[list[str], dict[str, str]]:
        """``(argv, files)`` for one sandbox run that builds and runs ``program``."""
        files = {self.source: program}
        if self.compile is None:
            return list(self.run), files
        compile_argv = list(self.compile)
        if self.language == "cpp" and "openssl/" in program:
            compile_argv.append("-lcrypto")  # HumanEval 162 (MD5) links OpenSSL, as DeepSeek-Coder's harness does
        files["teeny-build.sh"] = (
            "if ! " + shlex.join(compile_argv) + " >.teeny-compile.log 2>&1; then\n"
            f"  echo '{COMPILE_ERROR_MARKER}' >&2\n"
            "  head -c 20000 .teeny-compile.log >&2\n"
            "  exit 1\n"
            "fi\n"
            "exec " + shlex.join(self.run) + "\n")
        return ["/bin/sh", "teeny-build.sh"], files

    def sandbox_env(self) -> dict[str, str]:
        """A small environment: PATH holding the toolchain's binaries (tsc needs node), UTF-8.

        The sandbox makes every PATH directory readable inside it (re-binding what a 0700 home would hide),
        so the toolchain's cache directories go at the end of PATH too (they hold no executables)."""
        dirs: list[str] = []
        for path in self.binaries.values():
            if path and os.path.dirname(path) not in dirs:
                dirs.append(os.path.dirname(path))
        for d in ("/usr/local/bin", "/usr/bin", "/bin", *self.readable):
            if d not in dirs:
                dirs.append(d)
        return {"PATH": ":".join(dirs), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", **self.env}

    def sandbox_job(self, program: str, timeout: float) -> tuple[list[str], dict[str, Any]]:
        """``(argv, run_sandboxed keyword arguments)`` that build and run ``program`` with this toolchain's limits;
        ``timeout`` is the program's own budget (compiling gets ``compile_seconds`` more)."""
        from teeny_bench.sandbox import Limits

        argv, files = self.job(program)
        budget = timeout + (self.compile_seconds if self.compile is not None or self.language == "java" else 0.0)
        limits = Limits(cpu_seconds=budget, wall_seconds=budget + 5, memory_bytes=self.memory_bytes,
                        processes=self.processes)
        return argv, {"files": files, "limits": limits, "env": self.sandbox_env()}

    def compile_failed(self, stderr: str) -> bool:
        return any(marker in stderr for marker in self.compile_error_markers)

    def versions(self) -> dict[str, str]:
        """``{tool: first line of its version output}`` for the installed tools."""
        return {tool: _version(path) for tool, path in self.binaries.items() if path}


def _version(path: str) -> str:
    name = os.path.basename(path)
    flag = "-version" if name == "java" else "--version"
    try:
        out = subprocess.run([path, flag], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc.__class__.__name__})"
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def _which(tool: str, path: str | None) -> str | None:
    found = shutil.which(tool, path=path)
    return os.path.abspath(found) if found else None


def _javatuples() -> str | None:
    env = os.environ.get("TEENY_JAVATUPLES_JAR")
    if env:
        return env if os.path.isfile(env) else None
    candidates = sorted(glob.glob("/usr/share/java/javatuples*.jar"))
    return candidates[0] if candidates else None


def detect(language: str, path: str | None = None) -> Toolchain:
    """The toolchain for ``language`` as installed on ``PATH`` (or the given search path)."""
    return _detect(canonical_language(language), path if path is not None else os.environ.get("PATH", ""))


@functools.lru_cache(maxsize=64)
def _detect(language: str, path: str) -> Toolchain:
    def which(tool: str) -> str | None:
        return _which(tool, path)

    if language == "python":
        python = sys.executable if sys.executable and os.path.exists(sys.executable) else which("python3")
        return Toolchain("python", "test.py", [python or "python3", "-I", "test.py"], binaries={"python": python},
                         env=dict(ONE_THREAD))
    if language == "cpp":
        gpp = which("g++")
        return Toolchain("cpp", "test.cpp", ["./test"],
                         compile=[gpp or "g++", *CPP_FLAGS, "-o", "test", "test.cpp"],
                         binaries={"g++": gpp}, compile_seconds=60.0)
    if language == "java":
        java, jar = which("java"), _javatuples()
        return Toolchain("java", "Problem.java",
                         [java or "java", *JAVA_FLAGS, "-ea", "-cp", jar or "", "Problem.java"],
                         binaries={"java": java}, files={"javatuples.jar": jar}, memory_bytes=4 * GiB,
                         processes=256, compile_seconds=30.0, compile_error_markers=(JAVA_COMPILE_ERROR,))
    if language == "cs":
        mcs, mono = which("mcs"), which("mono")
        return Toolchain("cs", "Program.cs", [mono or "mono", "Program.exe"],
                         compile=[mcs or "mcs", "-d:DEBUG", "-r:System.Numerics.dll", "-out:Program.exe",
                                  "Program.cs"],
                         binaries={"mcs": mcs, "mono": mono}, processes=128,
                         # Mono prints a failed Debug.Assert through the trace listener and carries on.
                         assertion_markers=("DefaultTraceListener.Fail",),
                         env={"MONO_TRACE_LISTENER": "Console.Error"})
    if language == "js":
        node = which("node")
        return Toolchain("js", "test.js", [node or "node", "test.js"], binaries={"node": node}, processes=128)
    if language == "ts":
        node, tsc = which("node"), which("tsc")
        return Toolchain("ts", "test.ts", [node or "node", "test.js"],
                         compile=[tsc or "tsc", *TSC_FLAGS, "test.ts"], binaries={"node": node, "tsc": tsc},
                         memory_bytes=4 * GiB, processes=128, compile_seconds=60.0)
    if language == "php":
        php = which("php")
        return Toolchain("php", "test.php", [php or "php", "-f", "test.php"], binaries={"php": php})
    bash = which("bash")
    return Toolchain("sh", "test.sh", [bash or "bash", "test.sh"], binaries={"bash": bash})


def cache_root() -> Path:
    """Where per-machine toolchain caches live."""
    base = os.environ.get("TEENY_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "teeny")
    return Path(base) / "toolchains"


def _build_once(name: str, build) -> Path | None:
    """``cache_root()/name``, built by ``build(tmp_dir)`` into a temporary directory renamed into place;
    None when building fails (the caller then runs without the cache)."""
    final = cache_root() / name
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{name}-"))
    try:
        tmp.chmod(0o755)  # readable by a sandbox that runs programs as another user
        build(tmp)
        os.replace(tmp, final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        return final if final.is_dir() else None  # another process may have won the race
    except (subprocess.SubprocessError, RuntimeError):
        shutil.rmtree(tmp, ignore_errors=True)
        return None
    return final


def _cache_key(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]


def _cpp_pch(chain: Toolchain) -> Toolchain:
    gpp = chain.binaries["g++"] or "g++"
    flags = list(CPP_FLAGS)  # a precompiled header is only used with the flags it was built with

    def build(tmp: Path) -> None:
        header = tmp / "teeny-stdcxx.h"
        header.write_text("#include <bits/stdc++.h>\n")
        out = subprocess.run([gpp, *flags, "-x", "c++-header", str(header), "-o", f"{header}.gch"],
                             capture_output=True, timeout=300)
        if out.returncode != 0:
            raise RuntimeError(out.stderr.decode(errors="replace"))

    cache = _build_once(f"cpp-pch-{_cache_key(gpp, _version(gpp), *flags)}", build)
    if cache is None:
        return chain
    include = ["-include", str(cache / "teeny-stdcxx.h")]
    return dataclasses.replace(chain, compile=[chain.compile[0], *include, *chain.compile[1:]],
                               readable=(*chain.readable, str(cache)))


def _java_cds(chain: Toolchain) -> Toolchain:
    java = chain.binaries["java"] or "java"
    jar = chain.files["javatuples.jar"] or ""

    def build(tmp: Path) -> None:
        (tmp / "Problem.java").write_text(
            "import org.javatuples.*;\nimport java.util.*;\nclass Problem {\n"
            "    public static void main(String[] args) {\n"
            "        assert Pair.with(1L, \"a\").getValue0() == 1L;\n        System.out.println(new ArrayList<Long>());\n"
            "    }\n}\n")
        out = subprocess.run([java, *JAVA_FLAGS, f"-XX:ArchiveClassesAtExit={tmp / 'javac.jsa'}", "-ea", "-cp", jar,
                              str(tmp / "Problem.java")], capture_output=True, timeout=300, cwd=tmp)
        if out.returncode != 0 or not (tmp / "javac.jsa").is_file():
            raise RuntimeError(out.stderr.decode(errors="replace"))
        (tmp / "Problem.java").unlink()

    cache = _build_once(f"java-cds-{_cache_key(java, _version(java), jar, *JAVA_FLAGS)}", build)
    if cache is None:
        return chain
    run = [chain.run[0], f"-XX:SharedArchiveFile={cache / 'javac.jsa'}", *chain.run[1:]]
    return dataclasses.replace(chain, run=run, readable=(*chain.readable, str(cache)))


def prepared(chain: Toolchain) -> Toolchain:
    """The toolchain with its per-machine caches (C++ precompiled header, Java CDS archive) in use."""
    if not chain.available or chain.language not in ("cpp", "java"):
        return chain
    key = (chain.language, tuple(sorted(chain.binaries.items())), tuple(sorted(chain.files.items())),
           str(cache_root()))
    if key not in _PREPARED:
        _PREPARED[key] = _cpp_pch(chain) if chain.language == "cpp" else _java_cds(chain)
    return _PREPARED[key]


_PREPARED: dict[tuple, Toolchain] = {}


def typescript_compile(chain: Toolchain, programs: list[str], workers: int | None = None
                       ) -> list[tuple[bool, str]] | None:
    """Type-check and compile TypeScript programs in batches inside the sandbox (:mod:`._tsc_batch`: one
    node process per batch instead of one ``tsc`` per file), each exactly as ``tsc <flags> test.ts`` would:
    ``[(ok, javascript or diagnostics)]``, or None when the batch compiler cannot be used (then compile per file).
    """
    from teeny_bench.sandbox import Limits, run_many

    tsc, node = chain.binaries.get("tsc"), chain.binaries.get("node")
    if not programs or not tsc or not node:
        return None
    library = Path(os.path.realpath(tsc)).parent.parent / "lib" / "typescript.js"
    if not library.is_file():
        return None
    flags = dict(zip(TSC_FLAGS[0:6:2], TSC_FLAGS[1:6:2]))
    options = json.dumps({"target": flags["--target"], "lib": flags["--lib"].split(","), "skipLibCheck": True})
    from teeny_bench._tsc_batch import SOURCE as driver

    cores = workers or os.cpu_count() or 1
    size = min(64, max(8, -(-len(programs) // cores)))
    chunks = [list(range(i, min(i + size, len(programs)))) for i in range(0, len(programs), size)]
    jobs = []
    for chunk in chunks:
        files = {"tsc_batch.js": driver, **{f"p{i}.ts": programs[i] for i in chunk}}
        seconds = 30.0 + 3.0 * len(chunk)
        jobs.append(([node, "tsc_batch.js", str(library), options, *(f"p{i}.ts" for i in chunk)],
                     {"files": files, "env": chain.sandbox_env(),
                      "limits": Limits(cpu_seconds=seconds, wall_seconds=seconds + 10, memory_bytes=chain.memory_bytes,
                                       processes=chain.processes)}))
    out: list[tuple[bool, str] | None] = [None] * len(programs)
    for chunk, result in zip(chunks, run_many(jobs, workers=workers)):
        try:
            compiled = json.loads(result.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return None
        for i, entry in zip(chunk, compiled):
            out[i] = (True, entry["js"]) if entry["ok"] else (False, entry["diagnostics"])
    return out if all(o is not None for o in out) else None  # type: ignore[return-value]
