"""The verdict channel: the sandbox's fd 3 / fd 4 (spec shared with the warm sandbox), the nonce-tagged report,
and the type-tagged answers (digests for large ones) that leave the sandbox."""

from __future__ import annotations

import math
import sys

import pytest

from teeny_bench import _channel
from teeny_bench.sandbox import Limits, run_sandboxed

PY = [sys.executable, "-I", "-S", "-c"]


def test_fd3_yields_the_channel_bytes_and_fd4_comes_back():
    code = ("import os\ndata = b''\nwhile True:\n    chunk = os.read(3, 7)\n    if not chunk:\n        break\n"
            "    data += chunk\nos.close(3)\nos.write(4, data[::-1])\nos.write(4, b'!')\n")
    r = run_sandboxed(PY + [code], channel=b"nonce-123")
    assert r.status == "ok", r.stderr
    assert r.channel == b"321-ecnon!"
    reopened = run_sandboxed(PY + ["print(open('/proc/self/fd/3').read(), end='')\n"
                                   "open('/proc/self/fd/4', 'w').write('via path')"], channel=b"abc")
    assert reopened.stdout == "abc" and reopened.channel == b"via path", reopened.stderr  # Java/C# open by path


def test_without_a_channel_fds_3_and_4_are_closed():
    code = "import os\nfor fd in (3, 4):\n    try:\n        os.fstat(fd)\n        print(fd, 'open')\n    except OSError:\n        print(fd, 'closed')\n"
    r = run_sandboxed(PY + [code])
    assert r.stdout.split("\n")[:2] == ["3 closed", "4 closed"] and r.channel == b""
    empty = run_sandboxed(PY + ["import os; print(os.read(3, 10))"], channel=b"")
    assert empty.stdout.strip() == "b''" and empty.channel == b""


def test_channel_over_its_limit_kills_the_program():
    r = run_sandboxed(PY + ["import os\nwhile True:\n    os.write(4, b'x' * 65536)"], channel=b"",
                      limits=Limits(channel_bytes=1 << 20, wall_seconds=30))
    assert r.status == "killed" and r.reason == f"channel limit of {1 << 20} bytes exceeded"


def test_report_needs_the_nonce_and_the_last_one_wins():
    nonce = _channel.new_nonce()
    assert len(nonce) == 32 and nonce != _channel.new_nonce()
    channel = (b"junk\n" + b"0" * 32 + b' {"done": true}\n' + f"\n{nonce} ".encode() + b'{"n": 1}\n'
               + f"\n{nonce} ".encode() + b'{"n": 2}\nx')
    assert _channel.read_report(channel, nonce) == {"n": 2}
    assert _channel.read_report(b"\n" + b"0" * 32 + b' {"done": true}\n', nonce) is None
    assert _channel.read_report(f"\n{nonce} not json\n".encode(), nonce) is None


class Always:
    def __eq__(self, other):
        return True


@pytest.mark.parametrize("value", [None, True, 3, -(10 ** 30), 2.5, float("inf"), 1 + 2j, "é\ud800", b"\x00\xff",
                                   [1, (2, 3)], (), {1, 2}, frozenset({"a"}), {"k": [1.0, None], (1, 2): "t"}])
def test_builtin_answers_round_trip_with_their_types(value):
    back = _channel.from_tree(_channel.encode(value)["v"])
    assert back == value and type(back) is type(value)
    if isinstance(value, list):
        assert type(back[1]) is tuple


def test_nan_and_foreign_objects():
    assert math.isnan(_channel.from_tree(_channel.encode(float("nan"))["v"]))
    opaque = _channel.from_tree(_channel.encode(Always())["v"])
    assert opaque != Always() and opaque != 0 and "Always" in repr(opaque)


def test_builtin_subclasses_travel_as_their_plain_value():
    """Read through the base type's C methods: the subclass's __eq__, __repr__, __iter__ never run."""
    import collections

    class Liar(int):
        __eq__ = int.__ne__

        def __repr__(self):
            return "0"

    class Items(list):
        def __iter__(self):
            return iter([0])

    value = [Liar(7), Items([1, 2]), collections.OrderedDict(a=1), collections.Counter("aa")]
    back = _channel.from_tree(_channel.encode(value)["v"])
    assert back == [7, [1, 2], {"a": 1}, {"a": 2}]
    assert [type(x) for x in back] == [int, list, dict, dict]


def test_from_tree_rejects_malformed_trees():
    for node in (5, [], ["F", "abc"], ["I", "12x"], ["I", "1" * 5000], ["L", 5], ["D", [[["L", []], ["N"]]]],
                 ["D", [5]], ["Q", 1], ["B", 1], ["Y", "zz"], ["F", 1.5], ["S"], ["N", 1]):
        with pytest.raises(_channel.BadValue):
            _channel.from_tree(node)
    deep = ["N"]
    for _ in range(500):
        deep = ["L", [deep]]
    with pytest.raises(_channel.BadValue):
        _channel.from_tree(deep)


def test_big_ints_travel_in_hex():
    """18 * 10**999998 (HumanEval/83's plus answer): Python's decimal conversion is capped at 4300 digits."""
    big = 18 * 10 ** 999998
    encoded = _channel.encode(big, digest_above=1 << 30)
    assert encoded["v"][0] == "H"
    assert _channel.from_tree(encoded["v"]) == big
    assert _channel.measure(big) == _channel.measure(18 * 10 ** 999998)


def test_large_answers_become_digests_of_equal_values_only():
    big = "ab" * 600_000
    a, b = _channel.encode(big), _channel.encode("ab" * 599_999 + "ba")
    assert set(a) == {"sha256", "size"} and a["size"] > _channel.DIGEST_ABOVE
    assert _channel.same_digest(a, _channel.encode("ab" * 600_000)) is True
    assert _channel.same_digest(a, b) is False
    assert _channel.same_digest(a, _channel.encode("short")) is None
    # dicts and sets: order does not matter, as for ==
    d1 = {i: "x" * 100 for i in range(20_000)}
    d2 = dict(reversed(list(d1.items())))
    assert _channel.same_digest(_channel.encode(d1), _channel.encode(d2)) is True
    # list vs tuple, str vs bytes differ
    assert _channel.encode([0] * 400_000) != _channel.encode((0,) * 400_000)
    # large float answers must match exactly: int 3 is not float 3.0 there (below the threshold they compare by value)
    floats = _channel.encode([0.5] * 300_000)
    assert set(floats) == {"sha256", "size"}
    assert _channel.same_digest(floats, _channel.encode([0.5] * 300_000)) is True
    assert _channel.same_digest(floats, _channel.encode([0.5] * 299_999 + [0.5000001])) is False
    assert _channel.encode([3.0])["v"] != _channel.encode([3])["v"]


def test_dumps_writes_what_json_reads():
    import json

    value = {"a": [1, -2, 2.5, float("inf"), float("-inf"), None, True, False, "é\"\n\\"], "b": {"c": (1, "x")},
             "big": 10 ** 40}
    back = json.loads(_channel.dumps(value))
    assert back == {**value, "b": {"c": [1, "x"]}}
    assert math.isnan(json.loads(_channel.dumps(float("nan"))))
    with pytest.raises(TypeError, match="cannot write a set"):
        _channel.dumps({1})
