"""Token windows that start the way the model's tokenizer starts a document.

One rule for every window Teeny feeds a model (fidelity scoring, every calibrator, hence GPTQ, AWQ and the
GGUF importance matrix): a window is the tokenizer's document prefix (what ``tokenizer(text)`` puts before
the text: BOS for Gemma or Llama, nothing for Qwen2) followed by ``length - len(prefix)`` text tokens. A model
trained on documents that begin with BOS is out of distribution on windows without one.

``RULE`` names this rule; it is recorded in the run manifest, in calibration sets and in fidelity records,
so changing it re-measures instead of mixing windows made under two rules.
"""

from __future__ import annotations

import random
from typing import Any, Iterable

from teeny_core.errors import TeenyError

RULE = "document-prefix/1"
DESCRIPTION = ("every window starts with what the tokenizer puts before a document (tokenizer(text): BOS "
               "where it adds one, nothing otherwise), then text tokens")
_PROBE = "Hello world"


def document_prefix(tokenizer: Any) -> list[int]:
    """The token ids ``tokenizer(text)`` puts before the text's own tokens (e.g. ``[bos]``, or ``[]``)."""
    full = list(tokenizer.encode(_PROBE))  # the same ids as tokenizer(text)["input_ids"]
    bare = list(tokenizer.encode(_PROBE, add_special_tokens=False))
    for k in range(len(full) - len(bare) + 1):
        if full[k:k + len(bare)] == bare:
            return full[:k]
    raise TeenyError(f"tokenizer {type(tokenizer).__name__}: tokenizer(text) = {full} does not contain the text's "
                     f"own tokens {bare}; expected special tokens only around the text")


def text_ids(tokenizer: Any, text: str) -> list[int]:
    """The text's own token ids, without special tokens (windows add the document prefix themselves)."""
    return list(tokenizer.encode(text, add_special_tokens=False))


def contiguous_windows(prefix: list[int], ids: list[int], length: int, count: int) -> list[list[int]]:
    """Up to ``count`` windows of ``length`` tokens: the prefix, then consecutive non-overlapping text."""
    body = window_body(prefix, length)
    n = min(count, len(ids) // body)
    return [prefix + ids[i * body:(i + 1) * body] for i in range(n)]


def random_windows(prefix: list[int], ids: list[int], length: int, count: int, seed: int) -> list[list[int]]:
    """``count`` windows of ``length`` tokens: the prefix, then text from seeded random offsets of ``ids``."""
    body = window_body(prefix, length)
    if len(ids) < body:
        raise TeenyError(f"only {len(ids)} tokens of text, fewer than the {body} a window of {length} needs")
    rng = random.Random(seed)
    starts = [rng.randrange(0, len(ids) - body + 1) for _ in range(count)]
    return [prefix + ids[s:s + body] for s in starts]


def document_stream(tokenizer: Any, texts: Iterable[str], need: int) -> list[int]:
    """Text ids of consecutive documents (EOS between them, where the tokenizer has one) until ``need`` tokens."""
    ids: list[int] = []
    eos = tokenizer.eos_token_id
    for text in texts:
        ids.extend(text_ids(tokenizer, text))
        if eos is not None:
            ids.append(eos)
        if len(ids) >= need:
            break
    return ids


def record(prefix: list[int]) -> dict[str, Any]:
    """What calibration sets and fidelity records store about the windows they used."""
    return {"rule": RULE, "prefix": list(prefix)}


def window_body(prefix: list[int], length: int) -> int:
    """Text tokens in a window of ``length`` after ``prefix``; a one-line error when there is no room."""
    if length <= len(prefix):
        raise TeenyError(f"window length {length} leaves no room for text after the document prefix {prefix}; "
                         f"expected at least {len(prefix) + 1}")
    return length - len(prefix)
