"""Experiment specs: a TOML file (see docs/experiment-format.md) validated against the installed plugins."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import tomllib
from pathlib import Path
from typing import Any

from teeny_core.errors import TeenyError
from teeny_core.modeling import DEVICE_RE, DTYPES, check_baseline_dtype
from teeny_core.options import NoOptions, Options
from teeny_core.plugins import Plugins

BASELINE = "original"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # used with fullmatch
NAME_RULE = "use letters, digits, '.', '_' and '-', at most 100 characters (it names a directory)"
TOP_KEYS = {"name": "experiment name", "model": "model to quantize",
            "models": "several models, each run as its own sub-run (in place of model)", "seed": "random seed",
            "output_dir": "run store root", "device": "auto|cpu|cuda", "dtype": "source load dtype",
            "limit": "items per evaluator (0 = all)", "calibration": "calibrator table",
            "evaluators": "evaluator tables", "profilers": "profiler tables", "analyzers": "analyzer tables",
            "runtimes": "runtime option tables", "executor": "executor table", "variants": "array of variant tables",
            "baseline_runtime": "runtime that scores the original (a GGUF source: the file as published)",
            "baseline_dtype": "dtype of the float copy of a GGUF source: bfloat16 (default), float16 or float32"}
VARIANT_KEYS = ("name", "method", "runtime", "evaluators", "checkpoint")
MAX_SEED = 2**32 - 1  # numpy's and torch's seeding range
CHECKPOINT = "checkpoint"
"""The ``method`` of a variant that names an existing checkpoint instead of a quantizer."""


@dataclasses.dataclass
class Variant:
    name: str
    method: str  # a quantizer name, or "none" for the baseline
    options: Options  # the quantizer's, parsed (NoOptions for the baseline and an existing checkpoint)
    runtime: str | None = None
    evaluators: list[str] | None = None  # the experiment's evaluators this variant runs (None: all)
    checkpoint: str | None = None  # an existing checkpoint (directory, .gguf file or hub id) instead of a method


@dataclasses.dataclass
class Experiment:
    """A validated experiment: every component's options parsed once, into its Options class.
    :meth:`to_dict` is the JSON form (what the config hash, the manifest and a worker's task hold)."""

    name: str
    model: str
    seed: int = 0
    output_dir: str = "runs"
    device: str = "auto"
    dtype: str = "auto"
    limit: int = 0
    calibrator: str = "code"
    calibration: Options = dataclasses.field(default_factory=NoOptions)  # the calibrator's
    evaluators: dict[str, Options] = dataclasses.field(default_factory=dict)
    profilers: dict[str, Options] = dataclasses.field(default_factory=dict)
    analyzers: dict[str, Options] = dataclasses.field(default_factory=dict)
    runtimes: dict[str, Options] = dataclasses.field(default_factory=dict)
    variants: list[Variant] = dataclasses.field(default_factory=list)
    executor: str = "local"  # where variants run; never changes a result
    executor_options: dict[str, Options] = dataclasses.field(default_factory=dict)  # name -> options
    baseline_runtime: str | None = None
    baseline_dtype: str = "bfloat16"  # a GGUF source's float copy, which every variant is quantized from

    def to_dict(self) -> dict[str, Any]:
        """The experiment as JSON data, options as mappings (the ``[calibration]`` table with its ``method``)."""
        data = dataclasses.asdict(self)
        for attr in ("evaluators", "profilers", "analyzers", "runtimes", "executor_options"):
            data[attr] = {name: o.to_dict() for name, o in getattr(self, attr).items()}  # each Options' own form
        for v, variant in zip(data["variants"], self.variants):
            v["options"] = variant.options.to_dict()
        data["calibration"] = self.calibration_table()
        del data["calibrator"]
        return data

    def calibration_table(self) -> dict[str, Any]:
        """``{"method": <calibrator>, **its options}``, as the ``[calibration]`` table reads."""
        return {"method": self.calibrator, **self.calibration.to_dict()}

    def config_hash(self) -> str:
        """A hash of everything that can change a result (so not the executor)."""
        data = {k: v for k, v in self.to_dict().items() if k not in ("executor", "executor_options")}
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]

    @property
    def root(self) -> Path:
        return Path(self.output_dir) / self.name

    def all_variants(self) -> list[Variant]:
        """The baseline first, then the variants in file order."""
        return [Variant(BASELINE, "none", NoOptions(), self.baseline_runtime)] + self.variants


def experiment_from_dict(data: dict[str, Any], plugins: Plugins) -> Experiment:
    """Rebuild an :class:`Experiment` from :meth:`Experiment.to_dict` (already validated: each options mapping
    is parsed into its component's Options class, nothing else is checked)."""
    def parsed(kind: str, tables: dict[str, dict[str, Any]]) -> dict[str, Options]:
        return {name: plugins.get(kind, name).Options.from_mapping(opts) for name, opts in tables.items()}

    def variant(v: dict[str, Any]) -> Variant:
        quantizer = v["method"] not in ("none", CHECKPOINT)
        options = plugins.get("quantizer", v["method"]).Options.from_mapping(v["options"]) if quantizer else NoOptions()
        return Variant(**{**v, "options": options})

    calibration = dict(data["calibration"])
    calibrator = calibration.pop("method")
    return Experiment(**{
        **data, "calibrator": calibrator,
        "calibration": plugins.get("calibrator", calibrator).Options.from_mapping(calibration),
        **{attr: parsed(kind, data[attr]) for kind, attr in (("evaluator", "evaluators"), ("profiler", "profilers"),
                                                             ("analyzer", "analyzers"), ("runtime", "runtimes"),
                                                             ("executor", "executor_options"))},
        "variants": [variant(v) for v in data.get("variants", [])]})


@dataclasses.dataclass
class ModelEntry:
    """One model of an experiment with several (``models``): the name of its sub-run and where it comes from."""

    name: str
    path: str


MODEL_KEYS = ("name", "path")


def parse_models(data: dict[str, Any], where: str = "experiment") -> list[ModelEntry]:
    """The ``models`` list (strings, or ``[[models]]`` tables with ``name`` and ``path``) checked: not empty, not
    beside ``model``, every entry a valid name and a path, no model named twice."""
    def err(msg: str) -> TeenyError:
        return TeenyError(f"{where}: {msg}")

    raw = data["models"]
    if not isinstance(raw, list):
        raise err(f"models={raw!r} is not valid; expected a list of model paths or hub ids, or [[models]] tables")
    if not raw:
        raise err("models is empty; expected at least one model path or hub id")
    if "model" in data:
        raise err("give either 'model' (one model) or 'models' (several), not both")
    entries: list[ModelEntry] = []
    for n, item in enumerate(raw, 1):
        if isinstance(item, str):
            name, path = _model_name(item), item
        elif isinstance(item, dict):
            unknown = sorted(set(item) - set(MODEL_KEYS))
            if unknown:
                raise err(f"models #{n}: unknown key {unknown[0]!r}; valid keys: {', '.join(MODEL_KEYS)}")
            name, path = item.get("name"), item.get("path")
            if name is None and isinstance(path, str):
                name = _model_name(path)
        else:
            raise err(f"models #{n}: {item!r} is not valid; expected a path or hub id, or a table with name and path")
        if not isinstance(path, str) or not path or "\x00" in path:
            raise err(f"models #{n}: path={path!r} is not valid; expected a model directory, .gguf file or hub id")
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise err(f"models #{n}: name {_shown(name)} is not valid; {NAME_RULE} (give one in a [[models]] table)")
        for m, other in enumerate(entries, 1):
            if _same_place(other.path, path):
                raise err(f"models #{m} and #{n} name the same model {path!r}; list each model once")
            if other.name == name:
                raise err(f"models #{m} and #{n} are both named {name!r}; give each model its own name")
        entries.append(ModelEntry(name, path))
    return entries


def _model_name(path: str) -> str:
    """A sub-run's name from a model path or hub id: its last part, without ``.gguf``."""
    last = path.rstrip("/").rsplit("/", 1)[-1]
    return last[:-5] if last.endswith(".gguf") else last


def _same_place(a: str, b: str) -> bool:
    """Two model locations that name the same model: the same hub id, or paths to the same file or directory."""
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    if pa.exists() and pb.exists():
        return pa.resolve() == pb.resolve()
    return a.rstrip("/") == b.rstrip("/")


def read_experiment_file(path: str | Path) -> dict[str, Any]:
    """An experiment TOML file parsed, unvalidated; a missing, non-UTF-8 or invalid file is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise TeenyError(f"experiment file {str(path)!r} does not exist")
    try:
        data = tomllib.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise TeenyError(f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); "
                         "save the TOML file as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise TeenyError(f"{path}: not valid TOML: {exc}") from None
    return data


def load_experiment(path: str | Path, plugins: Plugins, overrides: dict[str, Any] | None = None) -> Experiment:
    """Read and validate an experiment TOML file; errors name the file, the key and what is valid."""
    data = {**read_experiment_file(path), **(overrides or {})}
    return build_experiment(data, plugins, where=str(path))


def build_experiment(data: dict[str, Any], plugins: Plugins, where: str = "experiment") -> Experiment:
    """Validate a parsed experiment mapping."""
    def err(msg: str) -> TeenyError:
        return TeenyError(f"{where}: {msg}")

    for key in data:
        if key not in TOP_KEYS:
            raise err(f"unknown key {key!r}; valid keys: {', '.join(TOP_KEYS)}")
    if "models" in data:
        parse_models(data, where)
        raise err("'models' lists several models: build it with teeny_core.study.build_study (teeny run does)")
    for key in ("name", "model"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise err(f"{key!r} is required (a string)")
    if not NAME_RE.fullmatch(data["name"]):
        raise err(f"name {_shown(data['name'])} is not valid; {NAME_RULE}")
    exp = Experiment(name=data["name"], model=data["model"])
    for key, typ in (("seed", int), ("limit", int), ("output_dir", str), ("device", str), ("dtype", str)):
        if key in data:
            if not isinstance(data[key], typ) or isinstance(data[key], bool):
                raise err(f"{key}={data[key]!r} is not valid; expected {typ.__name__}")
            setattr(exp, key, data[key])
    if "\x00" in exp.output_dir or "\x00" in exp.model:
        raise err(f"{'output_dir' if chr(0) in exp.output_dir else 'model'} holds a NUL character; expected a path")
    if not 0 <= exp.seed <= MAX_SEED:
        raise err(f"seed={exp.seed} is not valid; expected an int in 0..{MAX_SEED}")
    if exp.limit < 0:
        raise err(f"limit={exp.limit} is not valid; expected 0 (all) or a positive number")
    if exp.dtype not in DTYPES:
        raise err(f"dtype={exp.dtype!r} is not valid; expected one of {', '.join(DTYPES)}")
    if not DEVICE_RE.fullmatch(exp.device):
        raise err(f"device={exp.device!r} is not valid; expected auto, cpu, cuda or cuda:N")

    calibration = dict(_table(data, "calibration", err) or {"method": "code"})
    method = calibration.pop("method", "code")
    cal_cls = _component(plugins, "calibrator", method, err, "calibration.method")
    exp.calibrator, exp.calibration = method, _validated(cal_cls, calibration, f"{where}: calibration ({method})")

    for kind, attr in (("evaluator", "evaluators"), ("profiler", "profilers"), ("analyzer", "analyzers"),
                       ("runtime", "runtimes")):
        tables = _table(data, attr, err)
        if tables is None:
            if attr == "profilers":
                tables = {n: {} for n in plugins.names("profiler")}
            elif attr == "analyzers":
                tables = {n: {} for n in plugins.names("analyzer")}
            else:
                tables = {"fidelity": {}} if attr == "evaluators" else {}
        checked = {}
        for name, opts in tables.items():
            if not isinstance(opts, dict):
                raise err(f"{attr}.{name} must be a table of options")
            cls = _component(plugins, kind, name, err, f"{attr}.{name}")
            if "seed" in {f.name for f in cls.Options.fields()}:
                opts = {"seed": exp.seed, **opts}  # the experiment's seed drives bootstraps etc. unless set
            checked[name] = _validated(cls, opts, f"{where}: {attr}.{name}")
        setattr(exp, attr, checked)
    if not exp.evaluators:
        raise err("no evaluators; add e.g. [evaluators.fidelity]")
    exp.executor, exp.executor_options = _executor(data, plugins, err, where)
    if "baseline_runtime" in data:
        exp.baseline_runtime = data["baseline_runtime"]
        _component(plugins, "runtime", exp.baseline_runtime, err, "baseline_runtime")
    if "baseline_dtype" in data:
        try:
            exp.baseline_dtype = check_baseline_dtype(data["baseline_dtype"])
        except TeenyError as exc:
            raise err(str(exc)) from None

    raw_variants = data.get("variants", [])
    if not isinstance(raw_variants, list) or not all(isinstance(v, dict) for v in raw_variants):
        raise err("variants must be an array of tables ([[variants]])")
    seen = {BASELINE}
    for n, raw in enumerate(raw_variants, 1):
        raw = dict(raw)
        name, method = raw.pop("name", None), raw.pop("method", None)
        runtime = raw.pop("runtime", None)
        evaluators, checkpoint = raw.pop("evaluators", None), raw.pop("checkpoint", None)
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise err(f"variant #{n}: name {_shown(name)} is not valid; {NAME_RULE}")
        if name in seen:
            raise err(f"variant #{n}: name {name!r} is used twice (or is the reserved baseline name)")
        seen.add(name)
        if evaluators is not None and (not isinstance(evaluators, list) or not evaluators
                                       or any(e not in exp.evaluators for e in evaluators)):
            raise err(f"variant {name!r}: evaluators={evaluators!r} is not valid; expected a non-empty list of "
                      f"the experiment's evaluators ({', '.join(exp.evaluators)})")
        if checkpoint is not None:
            variant = _checkpoint_variant(name, method, checkpoint, runtime, raw, plugins, err)
            exp.variants.append(dataclasses.replace(variant, evaluators=evaluators))
            continue
        if not isinstance(method, str):
            raise err(f"variant {name!r}: 'method' is required; installed quantizers: {', '.join(plugins.names('quantizer'))}")
        q_cls = _component(plugins, "quantizer", method, err, f"variant {name!r} method")
        if runtime is not None:
            _component(plugins, "runtime", runtime, err, f"variant {name!r} runtime")
        options = _validated(q_cls, raw, f"{where}: variant {name!r} ({method})")
        exp.variants.append(Variant(name, method, options, runtime, evaluators))
    return exp


def _executor(data: dict[str, Any], plugins: Plugins, err, where: str) -> tuple[str, dict[str, Options]]:
    """``[executor] name = "..."`` picks the executor (default ``local``); ``[executor.<name>]`` tables hold
    options, each validated against that executor."""
    table = dict(_table(data, "executor", err) or {})
    name = table.pop("name", "local")
    _component(plugins, "executor", name, err, "executor.name")
    options = {}
    for key, opts in table.items():
        if not isinstance(opts, dict):
            raise err(f"executor.{key} is not valid; expected name = \"<executor>\" or an [executor.<executor>] "
                      f"table of options (installed executors: {', '.join(plugins.names('executor'))})")
        cls = _component(plugins, "executor", key, err, f"executor.{key}")
        options[key] = _validated(cls, opts, f"{where}: executor.{key}")
    return name, options


def _checkpoint_variant(name: str, method: Any, checkpoint: Any, runtime: Any, rest: dict[str, Any],
                        plugins: Plugins, err) -> Variant:
    """A variant that evaluates an existing checkpoint: no method, no quantizer options."""
    from teeny_core.checkpoints import check_location

    if method is not None:
        raise err(f"variant {name!r}: give either 'method' or 'checkpoint', not both")
    if not isinstance(checkpoint, str) or not checkpoint:
        raise err(f"variant {name!r}: checkpoint={checkpoint!r} is not valid; expected a path or a hub id (a string)")
    if rest:
        raise err(f"variant {name!r}: unknown key {sorted(rest)[0]!r} for a checkpoint variant; "
                  "valid keys: name, checkpoint, runtime, evaluators")
    if runtime is not None:
        _component(plugins, "runtime", runtime, err, f"variant {name!r} runtime")
    try:
        check_location(checkpoint)
    except TeenyError as exc:
        raise err(f"variant {name!r}: {exc}") from None
    return Variant(name, CHECKPOINT, NoOptions(), runtime, checkpoint=checkpoint)


def _shown(name: Any) -> str:
    """A name for an error message: ``repr``, long ones cut to their start and length."""
    if isinstance(name, str) and len(name) > 40:
        return f"{name[:20]!r}... ({len(name)} characters)"
    return repr(name)


def _table(data: dict[str, Any], key: str, err) -> dict[str, Any] | None:
    if key not in data:
        return None
    if not isinstance(data[key], dict):
        raise err(f"{key} must be a table")
    return data[key]


def _component(plugins: Plugins, kind: str, name: Any, err, where: str):
    found = plugins.components[kind].get(name) if isinstance(name, str) else None
    if found is None:
        valid = ", ".join(plugins.names(kind)) or "none installed"
        raise err(f"{where}: unknown {kind} {name!r}; installed: {valid}")
    return found.cls


def _validated(cls, options: dict[str, Any], where: str) -> Options:
    return cls.Options.from_mapping(options, where=where)
