"""Reading a JSON file that may be missing or garbled: the one reader the store, model checks and reports use.

It imports nothing of Teeny's but its errors, so the lowest modules (``modeling``) can use it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from teeny_core.errors import BadFileError


def read_json(path: Path, default: Any = None, expect: type | None = None) -> Any:
    """``path`` parsed, or ``default`` when it does not exist; a garbled file, a directory (or, with
    ``expect``, a file holding another JSON type) raises :class:`BadFileError` naming it, so nothing is
    overwritten by mistake."""
    path = Path(path)
    if not path.exists():
        return default
    if path.is_dir():
        raise BadFileError(path, "is a directory; expected a JSON file")
    try:
        data = json.loads(path.read_bytes())
    except (ValueError, RecursionError) as exc:  # bad JSON or UTF-8, an int of over 4300 digits, deep nesting
        reason = "nested too deeply" if isinstance(exc, RecursionError) else getattr(exc, "msg", exc)
        raise BadFileError(path, f"not valid JSON ({reason}); fix or delete it") from None
    if expect is not None and not isinstance(data, expect):
        wanted = {dict: "a JSON object", list: "a JSON array"}.get(expect, expect.__name__)
        raise BadFileError(path, f"expected {wanted}, found {json.dumps(data)[:40]}; fix or delete it")
    return data
