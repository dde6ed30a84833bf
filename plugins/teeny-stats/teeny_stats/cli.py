"""``teeny compare A B [C ...]``: the significance analysis of existing Teeny runs, lm-eval or evalplus results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from teeny_core import TeenyError, VariantResult


def load_variant_dir(path: Path, name: str | None = None) -> VariantResult:
    """Read a variant run directory (``runs/<experiment>/<variant>/``) without modifying it.

    As in the run store, an evaluator's records are those written under its current options (the ``config`` of
    its last record; records of earlier options stay in the file but are not counted), each key once, the first
    record winning. The artifact size is the one the run recorded in ``results.json``, else the size of the
    variant's ``artifact/`` directory."""
    path = Path(path)
    samples = path / "samples.jsonl"
    if not samples.is_file():
        raise TeenyError(f"{path} has no samples.jsonl; expected a variant run directory runs/<experiment>/<variant>/")
    found: list[dict[str, Any]] = []
    with open(samples, "rb") as f:
        for number, line in enumerate(f, 1):
            if not line.endswith(b"\n"):
                break  # a torn last line of an interrupted run
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TeenyError(f"{samples}:{number} is not valid JSON ({exc.msg})") from None
            if not isinstance(record, dict) or "key" not in record:
                raise TeenyError(f"{samples}:{number} is not a record (expected a JSON object with a 'key', "
                                 f"found {line[:40].decode(errors='replace').strip()})")
            found.append(record)
    current = {str(r.get("evaluator", "unknown")): r.get("config") for r in found}  # the last record's options
    records: dict[str, list[dict[str, Any]]] = {}
    seen: set[tuple[str, str]] = set()
    for record in found:
        evaluator = str(record.get("evaluator", "unknown"))
        ident = (evaluator, json.dumps(record["key"], sort_keys=True, default=str))
        if record.get("config") == current[evaluator] and ident not in seen:
            seen.add(ident)
            records.setdefault(evaluator, []).append(record)
    meta = _read(path / "variant.json")
    stored_name = meta.get("name") or path.name
    return VariantResult(name=name or stored_name, method=meta.get("method", "?"),
                         describe=meta.get("describe", {}), records=records,
                         metrics=_read(path / "metrics.json"), profile=_read(path / "profile.json"),
                         artifact_bytes=_artifact_bytes(path, stored_name))


def _artifact_bytes(path: Path, name: str) -> int | None:
    """The variant's artifact size as its run recorded it (``../results.json``), else measured from ``artifact/``."""
    from teeny_core import ARTIFACT_MANIFEST, Artifact
    from teeny_core.results import positive_bytes, variants_of

    recorded = next((v.get("artifact_bytes") for v in variants_of(_read(path.parent / "results.json"))
                     if v["name"] == name), None)
    if positive_bytes(recorded):
        return positive_bytes(recorded)
    if (path / "artifact" / ARTIFACT_MANIFEST).is_file():
        return Artifact.open(path / "artifact").size_bytes()
    return None


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TeenyError(f"{path} is not valid JSON ({getattr(exc, 'msg', exc)})") from None
    if not isinstance(data, dict):
        raise TeenyError(f"{path}: expected a JSON object, found {json.dumps(data)[:40]}")
    return data


@click.command("compare")
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("-o", "--option", "options", multiple=True, metavar="KEY=VALUE",
              help="significance analyzer option (alpha, power, resamples, seed, fields, higher_is_better, correction)")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path),
              help="also write the findings to this JSON file")
def compare(runs: tuple[Path, ...], options: tuple[str, ...], json_out: Path | None) -> None:
    """Compare results item by item; the first is the baseline, every other one is compared with it.

    RUNS are Teeny variant run directories, or lm-evaluation-harness --log_samples files
    (samples_<task>_<date>.jsonl) of one task, or lm-eval output folders (every task they share), or evalplus
    *_eval_results.json files. The p-values of all comparisons are Holm-corrected together."""
    import dataclasses

    from rich.console import Console
    from rich.table import Table

    from teeny_core import parse_cli_options
    from teeny_stats.analyzer import EXPERIMENT_KEY, SignificanceAnalyzer
    from teeny_stats.interop import check_comparable, is_foreign, load_foreign, to_variants
    from teeny_stats.report import ANALYSIS_HEADERS, analysis_rows

    if len(runs) < 2:
        raise TeenyError(f"compare needs a baseline and at least one result to compare with it, got only {runs[0]}")
    raw = parse_cli_options(options)
    parsed = SignificanceAnalyzer.Options.from_mapping(raw, "significance")
    if json_out:
        from teeny_core.store import check_writable

        check_writable(json_out.parent, "--json")
    files = [p for p in runs if is_foreign(p)]
    if files and len(files) != len(runs):
        raise TeenyError(f"{files[0]} is lm-eval or evalplus results but {next(p for p in runs if p not in files)} "
                         "is a Teeny run directory; compare Teeny runs with Teeny runs, and lm-eval or evalplus "
                         "results with their own kind")
    names = _names(runs)
    if files:
        loaded = [load_foreign(p) for p in runs]
        check_comparable(loaded)
        variants, continuous = to_variants(loaded, names)
        extra = [m for m in continuous if m not in parsed.fields]
        parsed = dataclasses.replace(parsed, fields=[*parsed.fields, *extra], higher_is_better=
                                     parsed.higher_is_better if "higher_is_better" in raw
                                     else [*parsed.higher_is_better, *extra])
    else:
        variants = [load_variant_dir(p, name) for p, name in zip(runs, names)]
        _check_shared(runs, variants)
    baseline, others = variants[0], variants[1:]
    findings = SignificanceAnalyzer().analyze(baseline, others, parsed)
    console = Console(width=200)
    for variant in others:
        rows = analysis_rows(findings.get(variant.name, {}))
        table = Table(title=f"{variant.name} (B) vs {baseline.name} (A, baseline)")
        for header in ANALYSIS_HEADERS:
            table.add_column(header, overflow="fold")
        for row in rows:
            table.add_row(*row)
        console.print(table)
        if not rows:
            console.print("no comparable records (no boolean 'passed' field and none of the fields "
                          f"{', '.join(parsed.fields)})")
    settings = findings[EXPERIMENT_KEY]
    console.print(f"alpha {settings['alpha']}, {settings['correction']} over {settings['comparisons']} comparisons, "
                  f"{settings['resamples']} bootstrap resamples (seed {settings['seed']})")
    if json_out:
        from teeny_core.store import write_json

        write_json(json_out, findings)


def _names(paths: tuple[Path, ...]) -> list[str]:
    """Display names: a file's folder, else a run directory's variant name (its variant.json, else the folder);
    where two collide, ``<parent>/<name>``, and where those collide too, the paths as given."""
    if all(p.is_file() for p in paths):
        names = [p.parent.resolve().name or str(p) for p in paths]
    else:
        names = [_read(p / "variant.json").get("name") or p.name for p in paths]
    if len(set(names)) < len(names):
        names = [f"{p.parent.resolve().name}/{n}" for p, n in zip(paths, names)]
    if len(set(names)) < len(names):
        names = [str(p) for p in paths]
    return names


def _check_shared(runs: tuple[Path, ...], variants: list[VariantResult]) -> None:
    """Every run shares an evaluator and an item with the baseline, else one line saying which does not."""
    a, run_a = variants[0], runs[0]
    for b, run_b in zip(variants[1:], runs[1:]):
        shared = sorted(set(a.records) & set(b.records))
        if not shared:
            raise TeenyError(f"{run_a} and {run_b} share no evaluator (A has {', '.join(sorted(a.records)) or 'none'}, "
                             f"B has {', '.join(sorted(b.records)) or 'none'})")
        if not any({r["key"] for r in a.records[ev]} & {r["key"] for r in b.records[ev]} for ev in shared):
            first = shared[0]
            raise TeenyError(f"{run_a} and {run_b} share no item: their {', '.join(shared)} records have no key in "
                             f"common (e.g. A {a.records[first][0]['key']!r}, B {b.records[first][0]['key']!r}); "
                             "compare two runs of the same benchmark items")
