"""Typed component options: dataclasses filled from TOML or ``-o key=value`` and validated with one-line errors."""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from typing import Any, Literal, get_args, get_origin

from teeny_core.errors import TeenyError


class OptionsError(TeenyError):
    """An option name or value that a component does not accept."""


def option(default: Any, help: str = "", *, choices: typing.Iterable[Any] | None = None,
           min: float | None = None, max: float | None = None, added: bool = False) -> Any:
    """Declare an option field with a help line and optional choices or bounds. ``added=True`` marks an option
    added after runs were stored: at its default it is left out of :meth:`Options.to_dict`, so the keys of those
    runs (which hash the options) do not move and a resumed run redoes nothing."""
    meta = {"help": help, "choices": tuple(choices) if choices is not None else None, "min": min, "max": max,
            "added": added}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass
class Options:
    """Base class of every component's options; subclasses are dataclasses whose fields use :func:`option`."""

    @classmethod
    def fields(cls) -> list[dataclasses.Field]:
        return [f for f in dataclasses.fields(cls) if f.init]

    @classmethod
    def describe(cls) -> list[tuple[str, str, Any, str]]:
        """(name, type, default, help) for each option, for ``teeny list``."""
        hints = typing.get_type_hints(cls)
        rows = []
        for f in cls.fields():
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            rows.append((f.name, _type_name(hints[f.name], f), default, f.metadata.get("help", "")))
        return rows

    @classmethod
    def from_mapping(cls, values: dict[str, Any] | None, where: str = "") -> "Options":
        """Build and validate options; ``where`` names the component in error messages."""
        values = dict(values or {})
        hints = typing.get_type_hints(cls)
        known = {f.name: f for f in cls.fields()}
        prefix = f"{where}: " if where else ""
        for key in values:
            if key not in known:
                valid = ", ".join(sorted(known)) or "none"
                raise OptionsError(f"{prefix}unknown option {key!r}; valid options: {valid}")
        kwargs = {key: _coerce(prefix, key, value, hints[key], known[key]) for key, value in values.items()}
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """The options as plain data (what run keys hash), without ``added`` options left at their default."""
        data = dataclasses.asdict(self)
        for f in dataclasses.fields(self):  # not self.fields(): an option may be named "fields"
            if f.metadata.get("added") and data[f.name] == _default(f):
                del data[f.name]
        return data


@dataclasses.dataclass
class NoOptions(Options):
    """A component without options."""


def parse_cli_options(pairs: typing.Iterable[str]) -> dict[str, Any]:
    """Turn ``key=value`` strings into a mapping; values are parsed as TOML scalars where they can be."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise OptionsError(f"bad option {pair!r}; expected key=value, e.g. -o bits=4")
        out[key.strip()] = _parse_scalar(raw.strip())
    return out


def _parse_scalar(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except Exception:
        return raw


def _type_name(tp: Any, f: dataclasses.Field) -> str:
    if f.metadata.get("choices"):
        return "|".join(str(c) for c in f.metadata["choices"])
    origin = get_origin(tp)
    if origin is Literal:
        return "|".join(str(a) for a in get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a, f) for a in get_args(tp) if a is not type(None)) + " or none"
    if origin is list:
        return f"list[{_type_name(get_args(tp)[0], f)}]"
    return getattr(tp, "__name__", str(tp))


def _coerce(prefix: str, key: str, value: Any, tp: Any, f: dataclasses.Field) -> Any:
    expected = _type_name(tp, f)

    def bad() -> OptionsError:
        return OptionsError(f"{prefix}option {key}={value!r} is not valid; expected {expected}")

    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        for arg in args:
            try:
                return _coerce(prefix, key, value, arg, f)
            except OptionsError:
                continue
        raise bad()
    if origin is Literal:
        if value not in get_args(tp):
            raise bad()
        return value
    if origin is list:
        if isinstance(value, str):
            value = [v for v in (s.strip() for s in value.split(",")) if v]
        if not isinstance(value, (list, tuple)):
            raise bad()
        return [_coerce(prefix, key, v, get_args(tp)[0], f) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            out: Any = value
        elif isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            out = value.lower() in ("true", "yes", "1", "on")
        else:
            raise bad()
    elif tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise bad()
        try:
            out = int(value)
        except ValueError:
            raise bad() from None
    elif tp is float:
        if isinstance(value, bool):
            raise bad()
        try:
            out = float(value)
        except (TypeError, ValueError):
            raise bad() from None
        if out != out:  # NaN passes every bound
            raise bad()
    elif tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise bad()
        out = str(value)
    else:
        out = value
    choices, lo, hi = f.metadata.get("choices"), f.metadata.get("min"), f.metadata.get("max")
    if choices is not None and out not in choices:
        raise bad()
    if (lo is not None and out < lo) or (hi is not None and out > hi):
        rng = f"{lo if lo is not None else '-inf'}..{hi if hi is not None else 'inf'}"
        raise OptionsError(f"{prefix}option {key}={value!r} is out of range; expected {expected} in {rng}")
    return out


def _default(f: dataclasses.Field) -> Any:
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
