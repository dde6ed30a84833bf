"""Typed options: coercion from TOML and -o strings, and one-line errors naming the value and what is valid."""

import dataclasses
from typing import Literal

import pytest

from teeny_core.options import Options, OptionsError, option, parse_cli_options


@dataclasses.dataclass
class Demo(Options):
    bits: int = option(4, "bits", choices=(2, 3, 4, 8))
    ratio: float = option(0.01, "damping", min=0.0, max=1.0)
    sym: bool = option(True, "symmetric")
    scheme: Literal["sym", "asym"] = option("asym", "scheme")
    skip: list[str] = option(["lm_head"], "patterns")
    group: int | None = option(None, "group size or none")


def test_cli_strings_are_parsed_as_toml_scalars():
    raw = parse_cli_options(["bits=8", "ratio=0.5", "sym=false", "scheme=sym", "skip=lm_head,model.layers.0*",
                             "group=none"])
    opts = Demo.from_mapping(raw)
    assert (opts.bits, opts.ratio, opts.sym, opts.scheme, opts.group) == (8, 0.5, False, "sym", None)
    assert opts.skip == ["lm_head", "model.layers.0*"]


def test_defaults_are_not_shared_between_instances():
    a, b = Demo(), Demo()
    a.skip.append("x")
    assert b.skip == ["lm_head"]


@pytest.mark.parametrize("values,message", [
    ({"bits": 5}, "demo: option bits=5 is not valid; expected 2|3|4|8"),
    ({"bits": "four"}, "demo: option bits='four' is not valid; expected 2|3|4|8"),
    ({"bits": True}, "option bits=True is not valid"),
    ({"ratio": 2.0}, "demo: option ratio=2.0 is out of range; expected float in 0.0..1.0"),
    ({"ratio": float("nan")}, "demo: option ratio=nan is not valid"),
    ({"ratio": "nan"}, "demo: option ratio='nan' is not valid"),
    ({"sym": "maybe"}, "demo: option sym='maybe' is not valid; expected bool"),
    ({"scheme": "both"}, "demo: option scheme='both' is not valid; expected sym|asym"),
    ({"group": "big"}, "demo: option group='big' is not valid; expected int or none"),
    ({"bitz": 4}, "demo: unknown option 'bitz'; valid options: bits, group, ratio, scheme, skip, sym"),
])
def test_bad_values_give_one_line_errors(values, message):
    with pytest.raises(OptionsError) as info:
        Demo.from_mapping(values, where="demo")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_bad_cli_pair():
    with pytest.raises(OptionsError, match="bad option 'bits'; expected key=value"):
        parse_cli_options(["bits"])


def test_describe_lists_every_option():
    rows = {name: (typ, default) for name, typ, default, _ in Demo.describe()}
    assert rows["bits"] == ("2|3|4|8", 4)
    assert rows["group"] == ("int or none", None)
    assert rows["skip"] == ("list[str]", ["lm_head"])
