"""Built-in calibrators: source code, text files, JSONL records and random tokens, cut into seeded token windows."""

from __future__ import annotations

import dataclasses
import random
import sysconfig
from pathlib import Path
from typing import Any, Iterable

from teeny_core import hookimpl
from teeny_core.errors import TeenyError
from teeny_core.options import Options, option
from teeny_core.store import jsonl_records
from teeny_core.types import CalibrationSet, Calibrator
from teeny_core.windows import document_prefix, document_stream, random_windows, window_body
from teeny_core.windows import record as window_record


@dataclasses.dataclass
class WindowOptions(Options):
    samples: int = option(128, "number of calibration windows", min=1)
    seq_len: int = option(512, "tokens per window", min=2)


@dataclasses.dataclass
class CodeOptions(WindowOptions):
    path: str = option("", "directory of source files (default: this Python's standard library)")
    glob: str = option("**/*.py", "which files under `path` to read")


@dataclasses.dataclass
class TextFileOptions(WindowOptions):
    path: list[str] = option([], "one or more text files")


@dataclasses.dataclass
class JsonlOptions(WindowOptions):
    path: str = option("", "a JSONL file with one record per line")
    field: str = option("text", "the record field holding the text")


def windows(texts: Iterable[str], tokenizer: Any, options: WindowOptions, seed: int, name: str,
            meta: dict[str, Any]) -> CalibrationSet:
    """Tokenize texts (EOS between documents) until there is enough, then take seeded random windows, each
    starting like a document (:mod:`teeny_core.windows`)."""
    prefix = document_prefix(tokenizer)
    ids = document_stream(tokenizer, texts, need=options.samples * options.seq_len * 2)
    try:
        samples = random_windows(prefix, ids, options.seq_len, options.samples, seed)
    except TeenyError as exc:
        raise TeenyError(f"calibrator {name}: {exc} (seq_len={options.seq_len})") from None
    return CalibrationSet(name=name, samples=samples,
                          meta={**meta, **options.to_dict(), "seed": seed, "source_tokens": len(ids),
                                "windows": window_record(prefix)})


def _existing(path: str, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise TeenyError(f"{what} {path!r} does not exist")
    return p


class CodeCalibrator(Calibrator[CodeOptions]):
    """Source files (default: the Python standard library, minus its docs) in a seeded order."""

    name = "code"
    Options = CodeOptions

    def samples(self, tokenizer: Any, options: CodeOptions, seed: int) -> CalibrationSet:
        root = _existing(options.path, "code directory") if options.path else Path(sysconfig.get_paths()["stdlib"])
        files = sorted(p for p in root.glob(options.glob)
                       if p.is_file() and "pydoc_data" not in p.parts and "site-packages" not in p.parts)
        if not files:
            raise TeenyError(f"calibrator code: no files match {options.glob!r} under {str(root)!r}")
        random.Random(seed).shuffle(files)
        texts = (p.read_text(errors="replace") for p in files)
        return windows(texts, tokenizer, options, seed, self.name, {"root": str(root)})


class TextFileCalibrator(Calibrator[TextFileOptions]):
    """Plain text files you supply."""

    name = "text-file"
    Options = TextFileOptions

    def samples(self, tokenizer: Any, options: TextFileOptions, seed: int) -> CalibrationSet:
        if not options.path:
            raise TeenyError("calibrator text-file: option path is required (one or more text files)")
        texts = (_existing(p, "text file").read_text(errors="replace") for p in options.path)
        return windows(texts, tokenizer, options, seed, self.name, {})


class JsonlCalibrator(Calibrator[JsonlOptions]):
    """A field of each record of a JSONL file you supply."""

    name = "jsonl"
    Options = JsonlOptions

    def samples(self, tokenizer: Any, options: JsonlOptions, seed: int) -> CalibrationSet:
        if not options.path:
            raise TeenyError("calibrator jsonl: option path is required")
        path = _existing(options.path, "JSONL file")

        def texts():
            for n, record in jsonl_records(path, "calibrator jsonl"):
                if not isinstance(record.get(options.field), str):
                    raise TeenyError(f"{path}:{n}: record has no text field {options.field!r}")
                yield record[options.field]

        return windows(texts(), tokenizer, options, seed, self.name, {})


class RandomTokensCalibrator(Calibrator[WindowOptions]):
    """Uniformly random non-special token ids after the document prefix (a data-free baseline)."""

    name = "random-tokens"
    Options = WindowOptions

    def samples(self, tokenizer: Any, options: WindowOptions, seed: int) -> CalibrationSet:
        special = set(tokenizer.all_special_ids)
        vocab = [i for i in range(len(tokenizer)) if i not in special]
        prefix = document_prefix(tokenizer)
        try:
            body = window_body(prefix, options.seq_len)
        except TeenyError as exc:
            raise TeenyError(f"calibrator random-tokens: {exc}") from None
        rng = random.Random(seed)
        samples = [prefix + [rng.choice(vocab) for _ in range(body)] for _ in range(options.samples)]
        return CalibrationSet(name=self.name, samples=samples,
                              meta={**options.to_dict(), "seed": seed, "windows": window_record(prefix)})


@hookimpl
def teeny_register_calibrators(register):
    for cls in (CodeCalibrator, TextFileCalibrator, JsonlCalibrator, RandomTokensCalibrator):
        register(cls)
