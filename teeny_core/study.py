"""Several models in one experiment (``models = [...]``): the study of quantization against model size.

Each model is a sub-run of its own, ``<output_dir>/<name>/models/<model>/``, run by the unchanged pipeline with
the same variants, calibration text, fidelity text, problems, seed and limit, and its own baseline (so resuming,
locking and ``--fresh`` work per model as for one model). The study then writes an index, ``study.json``: each
model's parameter count and run, and ``combined``, every model's variants in one results-shaped dict (named
``<model>/<variant>``) with the paired analysis of each against the largest model's original on the pass/fail
benchmark, which ``teeny recommend`` reads across models. The combined report is :mod:`teeny_core.study_report`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable

from teeny_core.errors import TeenyError
from teeny_core.experiment import (BASELINE, NAME_RE, NAME_RULE, Experiment, ModelEntry, build_experiment,
                                   parse_models, read_experiment_file)
from teeny_core.plugins import Plugins
from teeny_core.results import (PASS_FAIL, as_dict, comparison, declarations, failed, load_results, memory_of,
                                method_of, bits_of, primary_metric, score_of, variants_of)
from teeny_core.store import RunLock, check_writable, read_json, write_json
from teeny_core.units import format_bytes, format_number, format_params, format_points, format_rate, parse_size

INDEX = "study.json"
MODELS_DIR = "models"


@dataclasses.dataclass
class Study:
    """A validated experiment of several models: one :class:`Experiment` per model, under ``root/models/``."""

    name: str
    output_dir: str
    models: list[ModelEntry]
    experiments: list[Experiment]

    @property
    def root(self) -> Path:
        return Path(self.output_dir) / self.name

    def config_hash(self) -> str:
        """A hash of every model's config hash, in order."""
        hashes = [e.config_hash() for e in self.experiments]
        return hashlib.sha256(json.dumps(hashes).encode()).hexdigest()[:16]


def build_study(data: dict[str, Any], plugins: Plugins, where: str = "experiment") -> Study:
    """Validate an experiment mapping with ``models``: the list itself, then each model's experiment (the same
    keys with that model), so every variant is checked once per model before any work."""
    models = parse_models(data, where)
    name = data.get("name")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise TeenyError(f"{where}: name {name!r} is not valid; {NAME_RULE}")
    output_dir = data.get("output_dir", "runs")
    if not isinstance(output_dir, str) or "\x00" in output_dir:
        raise TeenyError(f"{where}: output_dir={output_dir!r} is not valid; expected a path")
    shared = {k: v for k, v in data.items() if k != "models"}
    sub_dir = str(Path(output_dir) / name / MODELS_DIR)
    experiments = [build_experiment({**shared, "name": m.name, "model": m.path, "output_dir": sub_dir}, plugins,
                                    where=f"{where}: model {m.name!r}") for m in models]
    return Study(name, output_dir, models, experiments)


def load_run(path: str | Path, plugins: Plugins, overrides: dict[str, Any] | None = None) -> Experiment | Study:
    """An experiment file as an :class:`Experiment` (``model``) or a :class:`Study` (``models``)."""
    return build_run({**read_experiment_file(path), **(overrides or {})}, plugins, where=str(path))


def build_run(data: dict[str, Any], plugins: Plugins, where: str = "experiment") -> Experiment | Study:
    """An experiment mapping as an :class:`Experiment` or, with ``models``, a :class:`Study`."""
    if "models" in data:
        return build_study(data, plugins, where)
    return build_experiment(data, plugins, where)


# -- checks before any work ------------------------------------------------------------------------

def reuses_token_ids(plugins: Plugins, calibration: dict[str, Any]) -> bool:
    """Whether the calibrator's set is token ids rather than text each model tokenizes: a calibrator whose
    options name no text (no ``path``, e.g. ``random-tokens``) draws ids from the vocabulary, so every model
    gets the same ids, which are the same input only to the same tokenizer."""
    cls = plugins.get("calibrator", calibration["method"])
    return "path" not in {f.name for f in cls.Options.fields()}


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """What a set of token ids depends on: the vocabulary, the special tokens and how a document starts."""
    from teeny_core.windows import document_prefix

    data = [sorted(tokenizer.get_vocab().items()), sorted(tokenizer.all_special_ids), document_prefix(tokenizer)]
    return hashlib.sha256(json.dumps(data).encode()).hexdigest()


def check_study(study: Study, plugins: Plugins) -> None:
    """Everything each model's run checks before work (files, settings, output), and that models whose
    calibration set is reused as token ids share one tokenizer."""
    from teeny_core.pipeline import Pipeline

    check_writable(study.root, f"output_dir {study.output_dir!r}:")
    pipelines = [Pipeline(exp, plugins) for exp in study.experiments]
    for pipeline in pipelines:
        pipeline.prepare()
    calibration = study.experiments[0].calibration_table()  # the same for every model, as are the variants
    calibrates = any(pipelines[0].plan.needs_calibration(v) for v in study.experiments[0].variants)
    if not calibrates or not reuses_token_ids(plugins, calibration):
        return
    first = None
    for model, pipeline in zip(study.models, pipelines):
        tokenizer = pipeline.plan.source.load_tokenizer()
        found = (model.name, tokenizer_fingerprint(tokenizer), len(tokenizer))
        if first is None:
            first = found
        elif found[1] != first[1]:
            raise TeenyError(
                f"models {first[0]!r} and {model.name!r} have different tokenizers ({first[2]} and {found[2]} "
                f"tokens), but calibration method {calibration['method']!r} gives token ids that every model "
                "reuses; use a calibrator that reads text (code, text-file, jsonl) or models with one tokenizer")


# -- running ----------------------------------------------------------------------------------------

def run_study(study: Study, plugins: Plugins, say: Callable[[str], None] = print, fresh: bool = False,
              on_event=None, on_outcome=None) -> dict[str, Any]:
    """Check every model, then run each model's experiment in turn (each resumable on its own), then write the
    index and the combined report; returns the index."""
    from teeny_core.pipeline import Pipeline, remove_run
    from teeny_core.study_report import write_study_report

    check_study(study, plugins)
    with RunLock(study.root):
        if fresh:
            remove_run(study.root)
        per_model: dict[str, dict[str, Any]] = {}
        for n, (model, exp) in enumerate(zip(study.models, study.experiments), 1):
            say(f"model {model.name} ({n}/{len(study.models)}): {model.path}")
            started = time.monotonic()
            pipeline = Pipeline(exp, plugins, say=lambda line, m=model.name: say(f"{m}: {line}"),
                                on_event=on_event, on_outcome=on_outcome)
            per_model[model.name] = pipeline.run()
            say(f"model {model.name}: done in {time.monotonic() - started:.0f} s")
        index = build_index(study, plugins, per_model)
        write_json(study.root / INDEX, index)
        write_study_report(study.root, index, per_model)
    return index


def model_parameters(exp: Experiment, plugins: Plugins) -> int | None:
    """Parameters of the model as its float copy stores them (what every variant is quantized from)."""
    from teeny_core.walker import parameter_count
    from teeny_core.pipeline import Pipeline

    try:
        return parameter_count(Pipeline(exp, plugins).runner.baseline_source())
    except (TeenyError, OSError, ValueError):
        return None


def build_index(study: Study, plugins: Plugins, per_model: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``study.json``: the models (name, path, parameters, run directory) and ``combined``."""
    models = [{"name": m.name, "path": m.path, "parameters": model_parameters(exp, plugins),
               "run": f"{MODELS_DIR}/{m.name}", "config_hash": exp.config_hash()}
              for m, exp in zip(study.models, study.experiments)]
    reference = max(enumerate(models), key=lambda im: (im[1]["parameters"] or 0, im[0]))[1]["name"]
    return {"study": study.name, "config_hash": study.config_hash(), "reference": reference, "models": models,
            "combined": combine(study, plugins, per_model, models, reference)}


def combine(study: Study, plugins: Plugins, per_model: dict[str, dict[str, Any]], models: list[dict[str, Any]],
            reference: str) -> dict[str, Any]:
    """Every model's variants in one results dict, named ``<model>/<variant>``, with the analyzers' paired
    comparison of each with the reference model's original on the pass/fail benchmarks (the same problems, so
    the items pair across models)."""
    from teeny_core.pipeline import Pipeline

    first = next(iter(per_model.values()))
    declared = declarations(first)
    pass_fail = [ev for ev, d in declared.items()
                 if d["headline"] and d["metrics"][d["headline"]].get("item_field") == PASS_FAIL]
    params = {m["name"]: m["parameters"] for m in models}
    entries, done = [], {}
    for model, exp in zip(study.models, study.experiments):
        pipeline = Pipeline(exp, plugins)
        for v in variants_of(per_model[model.name]):
            name = f"{model.name}/{v['name']}"
            entries.append({**v, "name": name, "model": model.name, "family": v["name"],
                            "parameters": params[model.name]})
            if pass_fail and not failed(v):
                result = pipeline.variant_result(pipeline.plan.variant(v["name"]))
                done[name] = dataclasses.replace(result, name=name,
                                                 records={ev: result.records.get(ev, []) for ev in pass_fail})
    baseline = f"{reference}/{BASELINE}"
    analysis: dict[str, Any] = {}
    if baseline in done:
        others = [r for name, r in done.items() if name != baseline]
        exp = study.experiments[0]
        for name, opts in exp.analyzers.items():
            cls = plugins.get("analyzer", name)
            analysis[name] = cls().analyze(done[baseline], others, opts)
    return {"experiment": study.name, "baseline": baseline, "evaluators": first.get("evaluators", {}),
            "variants": entries, "analysis": analysis}


def load_study(run_dir: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """A study's index and each model's results (``results.json`` of its run); one line when broken."""
    index = read_json(Path(run_dir) / INDEX, expect=dict)
    if index is None or not isinstance(index.get("models"), list) or not isinstance(index.get("combined"), dict):
        raise TeenyError(f"{run_dir} has no readable {INDEX}; expected the directory of a `teeny run` with models")
    per_model = {}
    for m in index["models"]:
        if not isinstance(m, dict) or not isinstance(m.get("name"), str) or not isinstance(m.get("run"), str):
            raise TeenyError(f"{Path(run_dir) / INDEX}: model entry {json.dumps(m)[:60]} has no 'name' and 'run'")
        per_model[m["name"]] = load_results(Path(run_dir) / m["run"])
    return index, per_model


def is_study(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a run of several models."""
    return (Path(run_dir) / INDEX).is_file()


# -- recommending across models --------------------------------------------------------------------

def recommend_across(index: dict[str, Any], memory: int | str, within_points: float) -> tuple[dict[str, Any], str]:
    """The smallest model, then the smallest variant of it, that fits ``memory`` and is shown to keep pass@1
    within ``within_points`` percentage points of the reference (the largest model's original), from the paired
    comparison against it (items paired across models, the same problems): the lower end of the difference's
    interval is at least ``-within_points`` and the run could detect a drop of that size (MDE at most
    ``within_points``). A variant merely not significantly different is not enough: a run too small to see a
    drop of N points (two problems that both sides pass give the interval [0, 0]) cannot show that it keeps
    within N."""
    combined = as_dict(index.get("combined"))
    primary = primary_metric(combined)
    if primary is None or primary.analysis_metric != PASS_FAIL:
        raise TeenyError("this study has no pass/fail benchmark (e.g. humaneval) to keep pass@1 on; --within "
                         "compares pass@1 with the largest model's original")
    if not 0 < within_points <= 100:
        raise TeenyError(f"--within {within_points:g} is not valid; expected percentage points in (0, 100]")
    budget, margin = parse_size(memory), within_points / 100
    baseline = combined.get("baseline")
    candidates, unanalyzed = [], []
    for v in variants_of(combined):
        if failed(v):
            continue
        if v["name"] == baseline:
            delta, ci, r = 0.0, [0.0, 0.0], {}
        else:
            r = comparison(combined, v["name"], primary) or {}
            ci = r.get("delta_ci")
            if not isinstance(ci, list) or len(ci) != 2 or not all(isinstance(x, (int, float)) for x in ci):
                unanalyzed.append(v["name"])
                continue
            delta = r.get("delta", 0.0)
        mem, how = memory_of(v)
        candidates.append({"v": v, "delta": delta, "ci": ci, "r": r, "mem": mem, "how": how,
                           "params": v.get("parameters") or 0})
    def shown(c: dict[str, Any]) -> bool:
        mde = c["r"].get("mde")
        return c["v"]["name"] == baseline or (c["ci"][0] >= -margin - 1e-12 and isinstance(mde, (int, float))
                                              and mde <= margin + 1e-12)

    kept = [c for c in candidates if shown(c)]
    fitting = [c for c in kept if c["mem"] is not None and c["mem"] <= budget]
    if not fitting:
        smallest = min((c for c in candidates if c["mem"] is not None), key=lambda c: c["mem"], default=None)
        detail = (f"the smallest measured, {smallest['v']['name']}, needs {format_bytes(smallest['mem'])}"
                  if smallest else "no variant has a measured memory")
        if kept:
            detail = "those that keep it: " + ", ".join(f"{c['v']['name']} ({format_bytes(c['mem'])})" for c in kept)
        raise TeenyError(f"no model and variant under {format_bytes(budget)} is shown to keep pass@1 within "
                         f"{within_points:g} points of {baseline}; {detail}")
    best = min(fitting, key=lambda c: (c["params"], c["mem"]))
    return best["v"], _why_across(combined, primary, best, candidates, kept, budget, within_points, unanalyzed)


def _why_across(combined, primary, best, candidates, kept, budget, within_points, unanalyzed) -> str:
    v = best["v"]
    base_score, base_ci = score_of(combined, next(x for x in variants_of(combined)
                                                  if x["name"] == combined["baseline"]), primary)
    score, ci = score_of(combined, v, primary)
    parts = [f"{v['name']} ({format_params(v.get('parameters'))} parameters; {method_of(v)}, bits {bits_of(v)}) fits {format_bytes(budget)} with "
             f"{format_bytes(best['mem'])} ({best['how']})"]
    if v["name"] == combined["baseline"]:
        parts.append(f"it is the reference (its {primary.label} is {format_rate(score, ci)}) and no smaller model "
                     f"or variant that fits is shown to keep within {within_points:g} points of it")
    else:
        r = best["r"]
        mde = r.get("mde")
        parts.append(f"its {primary.label} is {format_rate(score, ci)} against {format_rate(base_score, base_ci)} "
                     f"for {combined['baseline']}: paired difference {format_points(best['delta'], best['ci'])} "
                     f"over {r.get('n_problems', '?')} problems ({r.get('verdict', 'no verdict')}), whose lower end "
                     f"stays within {within_points:g} points and this run detects drops of {100 * mde:.0f} points")
        parts.append("it is the smallest model, and its smallest variant, that does and fits")
    smaller = [c for c in candidates if (c["params"], c["mem"] or 0) < (best["params"], best["mem"])
               and c not in kept and c["mem"] is not None and c["mem"] <= budget]
    if smaller:
        parts.append("smaller, but not shown within " + f"{within_points:g} points: " + ", ".join(
            f"{c['v']['name']} (lower end {100 * c['ci'][0]:+.1f} pp, "
            + (f"MDE {100 * c['r']['mde']:.0f} pp" if isinstance(c["r"].get("mde"), (int, float))
               else "too few problems to detect any drop") + ")"
            for c in smaller))
    too_big = [f"{c['v']['name']} ({format_bytes(c['mem'])})" for c in candidates
               if c["mem"] is not None and c["mem"] > budget]
    if too_big:
        parts.append("too large: " + ", ".join(too_big))
    unmeasured = [c["v"]["name"] for c in candidates if c["mem"] is None]
    if unmeasured or unanalyzed:
        parts.append("not considered (no memory or no paired analysis): " + ", ".join(unmeasured + unanalyzed))
    broken = [x["name"] for x in variants_of(combined) if failed(x)]
    if broken:
        parts.append("not considered (failed): " + ", ".join(broken))
    return "; ".join(parts) + "."


def study_lines(index: dict[str, Any], per_model: dict[str, dict[str, Any]]) -> list[str]:
    """What ``teeny run`` prints after a study: per family and model, the paired pass@1 drop and the KL."""
    from teeny_core.study_report import degradation_rows, format_drop

    lines = []
    for row in degradation_rows(index, per_model):
        found = [f"KL {format_number(row['kl'], 3)}"] if row["kl"] is not None else []
        if row["delta"] is not None:
            found.insert(0, f"pass@1 {format_drop(row)} vs its original ({row['verdict']})")
        lines.append(f"{row['family']} on {row['model']} ({format_params(row['parameters'])} parameters): "
                     + ("FAILED" if row["failed"] else ", ".join(found) or "no paired pass@1 or KL"))
    return lines
