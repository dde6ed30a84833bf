"""The TypeScript batch compiler that runs inside the sandbox (node), kept as a string so it ships with the
Python package: see :func:`teeny_bench.toolchains.typescript_compile`."""

SOURCE = r"""// Type-checks and compiles several TypeScript files, each as its own program exactly as `tsc <flags> FILE`
// would, but loading the compiler and the standard library declarations once (tsc costs ~3 s per file,
// nearly all of it spent parsing lib.*.d.ts). Runs inside the sandbox; it only compiles, never runs, code.
//
// Usage: node tsc_batch.js TYPESCRIPT_JS OPTIONS_JSON FILE...
// Prints one JSON line: [{"file", "ok", "diagnostics", "js"}] (ok: no error diagnostics, as tsc's exit 0).
"use strict";
const fs = require("fs");

const ts = require(process.argv[2]);
const converted = ts.convertCompilerOptionsFromJson(JSON.parse(process.argv[3]), ".");
if (converted.errors.length) {
  process.stderr.write(ts.formatDiagnostics(converted.errors, { getCanonicalFileName: (f) => f,
    getCurrentDirectory: () => ".", getNewLine: () => "\n" }));
  process.exit(2);
}
const options = converted.options;
const files = process.argv.slice(4);

const base = ts.createCompilerHost(options);
const libCache = new Map();
let emitted = new Map();
const host = Object.assign({}, base, {
  getSourceFile(fileName, languageVersion, onError, shouldCreate) {
    if (!files.includes(fileName)) {
      const key = fileName + "\0" + JSON.stringify(languageVersion);
      if (!libCache.has(key)) libCache.set(key, base.getSourceFile(fileName, languageVersion, onError, shouldCreate));
      return libCache.get(key);
    }
    return base.getSourceFile(fileName, languageVersion, onError, shouldCreate);
  },
  writeFile(fileName, text) { emitted.set(fileName, text); },
});
const formatHost = { getCanonicalFileName: (f) => f, getCurrentDirectory: () => ".", getNewLine: () => "\n" };

const results = [];
let previous;
for (const file of files) {
  emitted = new Map();
  const program = ts.createProgram([file], options, host, previous);
  previous = program;
  const diagnostics = ts.getPreEmitDiagnostics(program).concat(program.emit().diagnostics);
  const errors = diagnostics.filter((d) => d.category === ts.DiagnosticCategory.Error);
  const js = [...emitted.entries()].find(([name]) => name.endsWith(".js"));
  results.push({ file, ok: errors.length === 0, diagnostics: ts.formatDiagnostics(diagnostics, formatHost),
                 js: js ? js[1] : "" });
}
fs.writeSync(1, JSON.stringify(results) + "\n");
"""
