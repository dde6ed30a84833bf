"""Problem files: the one JSONL reader of the teeny-bench evaluators."""

from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path
from typing import Any

from teeny_core import TeenyError


def read_jsonl(path: Path, where: str = "") -> list[dict[str, Any]]:
    """Records (JSON objects) of a ``.jsonl`` or ``.jsonl.gz`` file (blank lines skipped); a one-line error,
    prefixed with ``where`` (the benchmark), names a malformed line."""
    opener = gzip.open if path.suffix == ".gz" else open
    prefix = f"{where}: " if where else ""
    records = []
    number = 0
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise TeenyError(f"{prefix}{path}:{number} is not valid JSON ({exc.msg})") from None
                except RecursionError:
                    raise TeenyError(f"{prefix}{path}:{number} is nested too deeply to be a record") from None
                except ValueError as exc:  # an int of over 4300 digits
                    raise TeenyError(f"{prefix}{path}:{number} cannot be read ({str(exc)[:80]})") from None
                if not isinstance(record, dict):
                    raise TeenyError(f"{prefix}{path}:{number} is a JSON {type(record).__name__}; expected an "
                                     "object (one record per line)")
                records.append(record)
    except (EOFError, OSError, UnicodeDecodeError, zlib.error) as exc:  # a truncated or corrupt .gz, not UTF-8
        raise TeenyError(f"{prefix}{path} cannot be read after line {number} ({exc}); expected a complete "
                         f"{'gzip-compressed ' if path.suffix == '.gz' else ''}UTF-8 JSON-lines file") from None
    return records
