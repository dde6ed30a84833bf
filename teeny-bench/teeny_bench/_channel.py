"""The verdict channel between a trusted harness inside the sandbox and the grading parent; standard library only.

It is copied next to each Python harness (``_he_harness.py``, ``_plus_harness.py``, ``lcb_harness.py``) and
imported by the parent too. The protocol (see :func:`teeny_bench.sandbox.run_sandboxed`'s ``channel``):

- the parent puts a fresh random nonce on fd 3 (:func:`new_nonce`); the harness reads it and closes fd 3
  before any solution code runs (:class:`Guard`);
- after the last test the harness writes one line, ``<nonce> <JSON>``, to fd 4; the parent accepts only a line
  carrying its nonce (:func:`read_report`). A program that exits early, forges a marker on stdout or writes to
  fd 4 without the nonce produces no report, whatever its exit status;
- values leave the sandbox as a type-tagged tree of builtin types (:func:`encode`), never as pickles or live
  objects, so the parent compares trusted values (an object whose ``__eq__`` is always true arrives as
  ``["?", "its type"]``). A value whose encoding exceeds :data:`DIGEST_ABOVE` bytes is sent as the SHA-256 of
  its canonical encoding (:func:`measure`), computed in bounded slices, so a 200 MB answer never travels. Such
  a large answer then has to be exactly equal (floats bit for bit, ``1`` is not ``1.0``); below the threshold
  the parent compares values, ``allclose`` included.
"""

import builtins
import os
import sys

from _json import encode_basestring_ascii as _quote  # the C string encoder: ``json`` costs a start-up ~50 ms

DIGEST_ABOVE = 1 << 20
MAX_DEPTH = 200
SLICE = 1 << 20
# Ints longer than this travel in hex: decimal conversion is quadratic in CPython (and refused past 4,300 digits
# by default), hex is linear and unlimited (HumanEval/83's answer for n = 10**6 has a million digits).
HEX_INT_BITS = 4096
# Methods through which an object can make a wrong answer compare equal (or truthy) to anything.
COMPARISON_METHODS = ("__eq__", "__ne__", "__bool__", "__len__", "__lt__", "__le__", "__gt__", "__ge__")


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
    except ValueError:
        return None
    return report if isinstance(report, dict) else None


class Guard:
    """The harness's side: takes the nonce from fd 3 before the solution exists, reports once on fd 4.

    A report is written only by the process that started the harness; with ``stop_forks`` ``os.fork`` children
    die at once (no fork-and-guess search over answers when the harness itself checks them). Changed builtins
    are named in the report.
    """

    def __init__(self, stop_forks=True):
        chunks = []
        while True:
            chunk = os.read(3, 4096)
            if not chunk:
                break
            chunks.append(chunk)
        os.close(3)
        self._nonce = b"".join(chunks)
        self._pid = os.getpid()
        self._builtins = builtins.__dict__.copy()
        if stop_forks:
            os.register_at_fork(after_in_child=_forked)

    # The two methods below run after the solution: they look up no builtin by name (a replaced ``sorted`` or
    # ``dict`` cannot hide itself); every other replaced builtin is named in the report.
    def tampering(self):
        """Names of builtins the solution replaced or removed (a monkeypatched ``print``, ``len`` ...)."""
        now = builtins.__dict__
        names = [name for name, value in self._builtins.items() if now.get(name, _MISSING) is not value]
        names.sort()
        return names

    def report(self, data):
        """Write the final report (once, from the harness's own process)."""
        if os.getpid() != self._pid:
            os._exit(70)
        data = {**data, "builtins_replaced": self.tampering()}
        line = b"\n" + self._nonce + b" " + dumps(data).encode() + b"\n"
        while line:
            line = line[os.write(4, line):]


_MISSING = object()
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


def _forked():
    os.write(2, b"teeny harness: the solution forked; the child process is stopped\n")
    os._exit(70)


_FUNCTION = type(_forked)


def suspicious(value, budget=10000):
    """A description of the first object in ``value`` (searched through lists, tuples, sets and dicts) whose
    type defines a comparison or truth method in Python, or ``""``."""
    stack = [value]
    while stack and budget > 0:
        budget -= 1
        item = stack.pop()
        kind = type(item)
        for name in COMPARISON_METHODS:
            if isinstance(getattr(kind, name, None), _FUNCTION):
                return f"a {kind.__qualname__} object, whose {name} is Python code"
        if kind in (list, tuple, set, frozenset):
            stack.extend(item)
        elif kind is dict:
            stack.extend(item.keys())
            stack.extend(item.values())
    return ""


# -- values ---------------------------------------------------------------------------------------------------

def _numpy_scalar(value):
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, numpy.generic) and type(value).__module__ == "numpy":
        try:
            return True, value.item()
        except Exception:
            return False, None
    return False, None


def tree(value, depth=0):
    """``value`` as a JSON-able type-tagged tree of builtin types; anything else becomes ``["?", type name]``."""
    kind = type(value)
    if depth > MAX_DEPTH:
        return ["?", "nested too deeply"]
    if value is None:
        return ["N"]
    if kind is bool:
        return ["B", value]
    if kind is int:
        return ["H", format(value, "x")] if value.bit_length() > HEX_INT_BITS else ["I", str(value)]
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
    converted, plain = _numpy_scalar(value)
    if converted:
        return tree(plain, depth)
    return ["?", kind.__qualname__]


def from_tree(node):
    """The Python value of a :func:`tree` (``["?", ...]`` becomes an :class:`Opaque`, equal to nothing)."""
    tag = node[0]
    if tag == "N":
        return None
    if tag == "B":
        return bool(node[1])
    if tag == "I":
        return int(node[1])
    if tag == "H":
        return int(node[1], 16)
    if tag == "F":
        return float(node[1])
    if tag == "C":
        return complex(float(node[1]), float(node[2]))
    if tag == "S":
        return str(node[1])
    if tag == "Y":
        return bytes.fromhex(node[1])
    if tag in ("L", "T"):
        items = [from_tree(v) for v in node[1]]
        return items if tag == "L" else tuple(items)
    if tag in ("E", "Z"):
        items = [from_tree(v) for v in node[1]]
        return set(items) if tag == "E" else frozenset(items)
    if tag == "D":
        return {from_tree(k): from_tree(v) for k, v in node[1]}
    return Opaque(str(node[1]))


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
    elif kind is int and value.bit_length() > HEX_INT_BITS:
        sink(b"H" + format(value, "x").encode() + b";")
    elif value is None or kind in (bool, int):
        sink(b"%s%s;" % ({type(None): b"N", bool: b"B", int: b"I"}[kind], str(value).encode()))
    else:
        converted, plain = _numpy_scalar(value)
        if converted:
            _feed(plain, sink, depth)
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


def same_digest(a, b):
    """True when both encodings are digests of the same value; None when either is a full value."""
    if "v" in a or "v" in b:
        return None
    return a.get("sha256") == b.get("sha256") and a.get("size") == b.get("size")
