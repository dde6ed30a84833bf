"""The verdict channel between a trusted harness inside the sandbox and the grading parent; standard library only.

It is copied next to each Python harness (``_call_harness.py``, ``lcb_harness.py``) and imported by the
parent too. The protocol (see :func:`teeny_bench.sandbox.run_sandboxed`'s ``channel``):

- the parent puts a fresh random nonce on fd 3 (:func:`new_nonce`); the harness reads it and closes fd 3
  before any solution code runs (:class:`Guard`);
- after the last test the harness writes one line, ``<nonce> <JSON>``, to fd 4; the parent accepts only a line
  carrying its nonce (:func:`read_report`). A program that exits early, forges a marker on stdout or writes to
  fd 4 without the nonce produces no report, whatever its exit status;
- values cross processes as a type-tagged tree of builtin types (:func:`encode`), never as pickles or live
  objects: a subclass of a builtin type travels as its builtin value, any other object as ``["?", "its
  type"]``, and :func:`from_tree` rebuilds only builtin values (or raises :class:`BadValue`), so the receiver
  compares trusted values. A value whose encoding exceeds :data:`DIGEST_ABOVE` bytes is sent as the SHA-256 of
  its canonical encoding (:func:`measure`), computed in bounded slices, so a 200 MB answer never travels. Such
  a large answer then has to be exactly equal (floats bit for bit, ``1`` is not ``1.0``); below the threshold
  the parent compares values, ``allclose`` included.
"""

import os
import sys

from _json import encode_basestring_ascii as _quote  # the C string encoder: ``json`` costs a start-up ~50 ms

DIGEST_ABOVE = 1 << 20
MAX_DEPTH = 200
SLICE = 1 << 20


def new_nonce():
    """A fresh unguessable nonce for one sandboxed run."""
    return os.urandom(16).hex()


def read_report(channel, nonce):
    """The JSON report carried by the last line of ``channel`` (bytes) that starts with ``nonce``, else None."""
    import json

    tag = nonce.encode() + b" "
    at = channel.rfind(b"\n" + tag)
    if at < 0:
        return None
    end = channel.find(b"\n", at + 1)
    line = channel[at + 1 + len(tag):end if end >= 0 else len(channel)]
    try:
        report = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return report if type(report) is dict else None


def set_dumpable(on):
    """Whether processes of the same uid may ptrace this one or open its ``/proc/<pid>/mem`` and ``fd/``
    (``PR_SET_DUMPABLE``): a harness turns it off before it holds the nonce, so solution code it forks
    cannot reach the channel or its memory through /proc."""
    import ctypes

    ctypes.CDLL(None).prctl(4, 1 if on else 0, 0, 0, 0)


class Guard:
    """The harness's side: takes the nonce from fd 3 before any solution code exists, reports once on fd 4."""

    def __init__(self):
        chunks = []
        while True:
            chunk = os.read(3, 4096)
            if not chunk:
                break
            chunks.append(chunk)
        os.close(3)
        self._nonce = b"".join(chunks)

    def report(self, data):
        """Write the final report."""
        line = b"\n" + self._nonce + b" " + dumps(data).encode() + b"\n"
        while line:
            line = line[os.write(4, line):]


# Builtins bound when the harness imports this module, before any solution code: what ``dumps`` uses.
_type, _str, _bool, _int, _float, _list, _tuple, _dict = type, str, bool, int, float, list, tuple, dict
_INFINITIES = (float("inf"), float("-inf"))


def dumps(value):
    """JSON text of None, bools, ints, floats, strings, lists/tuples and dicts with string keys (NaN and the
    infinities as ``json`` writes them)."""
    kind = _type(value)
    if value is None:
        return "null"
    if kind is _bool:
        return "true" if value else "false"
    if kind is _int:
        return _int.__repr__(value)
    if kind is _float:
        if value != value:
            return "NaN"
        if value in _INFINITIES:
            return "Infinity" if value > 0 else "-Infinity"
        return _float.__repr__(value)
    if kind is _str:
        return _quote(value)
    if kind is _list or kind is _tuple:
        return "[" + ", ".join([dumps(v) for v in value]) + "]"
    if kind is _dict:
        return "{" + ", ".join([_quote(k) + ": " + dumps(v) for k, v in value.items()]) + "}"
    raise TypeError(f"cannot write a {kind.__qualname__} in a report")


# -- values ---------------------------------------------------------------------------------------------------

def _numpy_scalar(value):
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, numpy.generic) and type(value).__module__ == "numpy":
        try:
            return True, value.item()
        except Exception:
            return False, None
    return False, None


# Subclasses of builtin types travel as their builtin value, read through the base type's own C methods (an
# ``int`` subclass's ``__eq__``, ``__repr__`` or ``__iter__`` never runs).
_PLAIN = ((bool, bool), (int, int.__index__), (float, float.__float__), (complex, complex.__complex__),
          (str, str.__str__), (bytes, bytes.__bytes__), (list, lambda v: list(list.__iter__(v))),
          (tuple, lambda v: tuple(tuple.__iter__(v))), (dict, lambda v: dict(dict.items(v))),
          (set, lambda v: set(set.__iter__(v))), (frozenset, lambda v: frozenset(frozenset.__iter__(v))))
_EXACT = frozenset(base for base, _ in _PLAIN) | {type(None)}
BIG_INT_BITS = 13000  # larger ints travel in hex (Python's decimal conversion is quadratic and capped)


def plain(value):
    """``value`` as an exact builtin type when it is one or a subclass of one (shallow), else unchanged."""
    kind = type(value)
    if kind in _EXACT:
        return value
    for base, convert in _PLAIN:
        if issubclass(kind, base):
            return convert(value)
    converted, scalar = _numpy_scalar(value)
    return scalar if converted else value


def tree(value, depth=0):
    """``value`` as a JSON-able type-tagged tree of builtin types; anything else becomes ``["?", type name]``."""
    if depth > MAX_DEPTH:
        return ["?", "nested too deeply"]
    try:
        value = plain(value)
    except Exception:  # noqa: BLE001 - a value that cannot be read as a builtin is opaque
        return ["?", type(value).__qualname__]
    kind = type(value)
    if value is None:
        return ["N"]
    if kind is bool:
        return ["B", value]
    if kind is int:
        return ["H", hex(value)] if value.bit_length() > BIG_INT_BITS else ["I", str(value)]
    if kind is float:
        return ["F", repr(value)]
    if kind is complex:
        return ["C", repr(value.real), repr(value.imag)]
    if kind is str:
        return ["S", value]
    if kind is bytes:
        return ["Y", value.hex()]
    if kind in (list, tuple):
        return ["L" if kind is list else "T", [tree(v, depth + 1) for v in value]]
    if kind in (set, frozenset):
        items = sorted((tree(v, depth + 1) for v in value), key=dumps)
        return ["E" if kind is set else "Z", items]
    if kind is dict:
        return ["D", [[tree(k, depth + 1), tree(v, depth + 1)] for k, v in value.items()]]
    return ["?", kind.__qualname__]


class BadValue(ValueError):
    """A reported value that is not a well-formed tree of :func:`tree`."""


_INT_TEXT = frozenset("-0123456789")
_HEX_TEXT = frozenset("-0123456789abcdefx")


def from_tree(node, depth=0):
    """The Python value of a :func:`tree`, built only from builtin types (``["?", ...]`` becomes an
    :class:`Opaque`, equal to nothing); anything malformed raises :class:`BadValue`."""
    if depth > MAX_DEPTH + 1:  # tree() ends deeper values with an opaque leaf at MAX_DEPTH + 1
        raise BadValue("a value nested too deeply")
    if type(node) is not list or not node or type(node[0]) is not str:
        raise BadValue(f"a malformed value {_clip(node)}")
    tag, args = node[0], node[1:]
    try:
        if tag == "N" and not args:
            return None
        if tag == "B" and len(args) == 1 and type(args[0]) is bool:
            return args[0]
        if tag == "I" and len(args) == 1 and type(args[0]) is str and len(args[0]) <= 4300 \
                and _INT_TEXT.issuperset(args[0]):
            return int(args[0])
        if tag == "H" and len(args) == 1 and type(args[0]) is str and _HEX_TEXT.issuperset(args[0]):
            return int(args[0], 16)
        if tag == "F" and len(args) == 1 and _is_float_text(args[0]):
            return float(args[0])
        if tag == "C" and len(args) == 2 and all(_is_float_text(a) for a in args):
            return complex(float(args[0]), float(args[1]))
        if tag == "S" and len(args) == 1 and type(args[0]) is str:
            return args[0]
        if tag == "Y" and len(args) == 1 and type(args[0]) is str:
            return bytes.fromhex(args[0])
        if tag in ("L", "T", "E", "Z") and len(args) == 1 and type(args[0]) is list:
            items = [from_tree(v, depth + 1) for v in args[0]]
            return {"L": list, "T": tuple, "E": set, "Z": frozenset}[tag](items)
        if tag == "D" and len(args) == 1 and type(args[0]) is list:
            pairs = args[0]
            if not all(type(p) is list and len(p) == 2 for p in pairs):
                raise BadValue("a malformed dict")
            return {from_tree(k, depth + 1): from_tree(v, depth + 1) for k, v in pairs}
        if tag == "?" and len(args) == 1 and type(args[0]) is str:
            return Opaque(args[0][:200])
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:  # unhashable keys, bad hex...
        raise BadValue(f"a malformed {tag!r} value: {type(exc).__name__}") from None
    raise BadValue(f"a malformed value {_clip(node)}")


def _is_float_text(text):
    return type(text) is str and 0 < len(text) <= 40 and "_" not in text


def _clip(node):
    text = repr(node)
    return text if len(text) <= 80 else text[:80] + "..."


def has_opaque(value, budget=1 << 20):
    """True when an :class:`Opaque` is anywhere in a value built by :func:`from_tree`."""
    stack = [value]
    while stack and budget > 0:
        budget -= 1
        item = stack.pop()
        kind = type(item)
        if kind is Opaque:
            return True
        if kind in (list, tuple, set, frozenset):
            stack.extend(item)
        elif kind is dict:
            stack.extend(item.keys())
            stack.extend(item.values())
    return budget <= 0


def describe(value):
    """What a value holding an :class:`Opaque` is, for a failure's detail."""
    return repr(value) if len(repr(value)) <= 120 else repr(value)[:120] + "..."


class Opaque:
    """An answer of a type the channel does not carry: equal to nothing, so it fails every test."""

    __slots__ = ("type_name",)

    def __init__(self, type_name):
        self.type_name = type_name

    def __eq__(self, other):
        return False

    def __hash__(self):
        return hash(self.type_name)

    def __repr__(self):
        return f"<a {self.type_name} object>"


def _feed(value, sink, depth=0):
    """Feed the canonical byte encoding of ``value`` to ``sink`` (dicts and sets in sorted order, as ``==``
    ignores their order)."""
    try:
        value = plain(value)
    except Exception:  # noqa: BLE001 - encoded as an opaque value below
        pass
    kind = type(value)
    if depth > MAX_DEPTH:
        sink(b"?deep;")
    elif kind is str:
        sink(b"S%d:" % len(value))
        for start in range(0, len(value), SLICE):
            sink(value[start:start + SLICE].encode("utf-8", "surrogatepass"))
    elif kind is bytes:
        sink(b"Y%d:" % len(value))
        sink(value)
    elif kind in (list, tuple):
        sink(b"%s%d:" % (b"L" if kind is list else b"T", len(value)))
        for item in value:
            _feed(item, sink, depth + 1)
    elif kind in (set, frozenset, dict):
        parts = []
        for item in (value.items() if kind is dict else value):
            chunks = []
            _feed(item, chunks.append, depth + 1)
            parts.append(b"".join(chunks))
        sink(b"%s%d:" % ({set: b"E", frozenset: b"Z", dict: b"D"}[kind], len(parts)))
        for part in sorted(parts):
            sink(part)
    elif kind in (float, complex):
        sink(b"F" + repr(value).encode() + b";")
    elif kind is int and value.bit_length() > BIG_INT_BITS:
        sink(b"H" + hex(value).encode() + b";")
    elif value is None or kind in (bool, int):
        sink(b"%s%s;" % ({type(None): b"N", bool: b"B", int: b"I"}[kind], str(value).encode()))
    else:
        sink(b"?" + kind.__qualname__.encode() + b";")


def measure(value):
    """``(size, sha256 hex)`` of ``value``'s canonical encoding, computed without building it."""
    import hashlib

    digest = hashlib.sha256()
    size = 0

    def sink(chunk):
        nonlocal size
        size += len(chunk)
        digest.update(chunk)

    _feed(value, sink)
    return size, digest.hexdigest()


def encode(value, digest_above=DIGEST_ABOVE):
    """What leaves the sandbox for one answer: ``{"v": tree}``, or ``{"sha256", "size"}`` for a large one."""
    try:
        size, digest = measure(value)
        if size > digest_above:
            return {"sha256": digest, "size": size}
        return {"v": tree(value)}
    except RecursionError:
        return {"v": ["?", "nested too deeply"]}


def encoding_problem(encoded):
    """What is malformed in an answer as :func:`encode` writes it (``""`` when it is well formed): a value tree
    that decodes, or a digest and size."""
    if type(encoded) is not dict:
        return "not an encoded answer"
    if "v" in encoded and len(encoded) == 1:
        try:
            from_tree(encoded["v"])
        except BadValue as exc:
            return str(exc)
        return ""
    if type(encoded.get("sha256")) is str and type(encoded.get("size")) is int and len(encoded) == 2:
        return ""
    return "neither a value nor a digest"


def same_digest(a, b):
    """True when both encodings are digests of the same value; None when either is a full value."""
    if "v" in a or "v" in b:
        return None
    return a.get("sha256") == b.get("sha256") and a.get("size") == b.get("size")
