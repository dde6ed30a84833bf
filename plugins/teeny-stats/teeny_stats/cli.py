"""``teeny compare RUN_DIR_A RUN_DIR_B``: the significance analysis of two existing variant runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from teeny_core.errors import TeenyError
from teeny_core.types import VariantResult


def load_variant_dir(path: Path, name: str | None = None) -> VariantResult:
    """Read a variant run directory (``runs/<experiment>/<variant>/``) without modifying it.

    Each (evaluator, key) counts once, the first record winning, as in the run store."""
    path = Path(path)
    samples = path / "samples.jsonl"
    if not samples.is_file():
        raise TeenyError(f"{path} has no samples.jsonl; expected a variant run directory runs/<experiment>/<variant>/")
    records: dict[str, list[dict[str, Any]]] = {}
    seen: set[tuple[str, str]] = set()
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
            evaluator = str(record.get("evaluator", "unknown"))
            ident = (evaluator, json.dumps(record["key"], sort_keys=True, default=str))
            if ident not in seen:
                seen.add(ident)
                records.setdefault(evaluator, []).append(record)
    meta = _read(path / "variant.json")
    return VariantResult(name=name or meta.get("name") or path.name, method=meta.get("method", "?"),
                         describe=meta.get("describe", {}), records=records,
                         metrics=_read(path / "metrics.json"), profile=_read(path / "profile.json"),
                         artifact_bytes=meta.get("artifact_bytes"))


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
@click.argument("run_a", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("run_b", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-o", "--option", "options", multiple=True, metavar="KEY=VALUE",
              help="significance analyzer option (alpha, power, resamples, seed, fields, higher_is_better, correction)")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path),
              help="also write the findings to this JSON file")
def compare(run_a: Path, run_b: Path, options: tuple[str, ...], json_out: Path | None) -> None:
    """Compare two variant run directories item by item; RUN_A is the baseline."""
    from rich.console import Console
    from rich.table import Table

    from teeny_core.options import parse_cli_options
    from teeny_core.report import ANALYSIS_HEADERS, analysis_rows
    from teeny_stats.analyzer import EXPERIMENT_KEY, SignificanceAnalyzer

    parsed = SignificanceAnalyzer.Options.from_mapping(parse_cli_options(options), "significance")
    if json_out:
        from teeny_core.store import check_writable

        check_writable(json_out.parent, "--json")
    a, b = load_variant_dir(run_a), load_variant_dir(run_b)
    if a.name == b.name:
        a.name, b.name = f"{run_a.parent.name}/{a.name}", f"{run_b.parent.name}/{b.name}"
    shared = sorted(set(a.records) & set(b.records))
    if not shared:
        raise TeenyError(f"{run_a} and {run_b} share no evaluator (A has {', '.join(sorted(a.records)) or 'none'}, "
                         f"B has {', '.join(sorted(b.records)) or 'none'})")
    if not any({r["key"] for r in a.records[ev]} & {r["key"] for r in b.records[ev]} for ev in shared):
        first = shared[0]
        raise TeenyError(f"{run_a} and {run_b} share no item: their {', '.join(shared)} records have no key in "
                         f"common (e.g. A {a.records[first][0]['key']!r}, B {b.records[first][0]['key']!r}); "
                         "compare two runs of the same benchmark items")
    findings = SignificanceAnalyzer().analyze(a, [b], parsed)
    rows = analysis_rows(findings.get(b.name, {}))
    table = Table(title=f"{b.name} (B) vs {a.name} (A, baseline)")
    for header in ANALYSIS_HEADERS:
        table.add_column(header, overflow="fold")
    for row in rows:
        table.add_row(*row)
    console = Console(width=200)
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
