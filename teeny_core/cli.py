"""The ``teeny`` command line. Imports stay light: models load only inside commands that need them."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import click

from teeny_core.errors import TeenyError
from teeny_core.options import parse_cli_options
from teeny_core.plugins import KINDS, Plugins

HEADLINE = {"pass@1": "pass@1", "pass@10": "pass@10", "perplexity": "ppl", "kl_mean": "KL", "top1_mean": "top-1"}


class TeenyGroup(click.Group):
    """Turns :class:`TeenyError` into a one-line message and exit status 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TeenyError as exc:
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(2)


@click.group(cls=TeenyGroup)
@click.version_option(package_name="teeny-core", prog_name="teeny")
def cli() -> None:
    """Teeny: quantize language models and prove what they kept."""


def plugins() -> Plugins:
    """The installed plugins (loaded once per process)."""
    global _PLUGINS
    if _PLUGINS is None:
        _PLUGINS = Plugins.load()
    return _PLUGINS


_PLUGINS: Plugins | None = None


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    except ImportError:
        pass


@cli.command(name="plugins")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins_cmd(as_json: bool) -> None:
    """Installed plugins: name, version, hooks, components; broken ones with their error."""
    infos = list(plugins().infos.values())
    if as_json:
        click.echo(json.dumps([{k: v for k, v in vars(i).items() if k != "traceback"} for i in infos], indent=2))
        return
    from rich.table import Table

    table = Table("plugin", "version", "hooks", "components", "status")
    for i in infos:
        status = f"[red]broken: {i.error}[/red]" if i.error else ("built-in" if i.builtin else "ok")
        table.add_row(i.name, i.version, "\n".join(i.hooks), "\n".join(i.components), status)
    console().print(table)


@cli.command(name="list")
@click.argument("kind", required=False, type=click.Choice(list(KINDS)))
def list_cmd(kind: str | None) -> None:
    """Quantizers, calibrators, evaluators, profilers, runtimes and analyzers, with their options."""
    out = console()
    for k in [kind] if kind else list(KINDS):
        out.print(f"[bold]{k}s[/bold]")
        names = plugins().names(k)
        if not names:
            out.print("  (none installed)")
        for name in names:
            cls = plugins().get(k, name)
            out.print(f"  [cyan]{name}[/cyan]  {cls.summary()}")
            for opt, typ, default, help_ in cls.Options.describe():
                out.print(f"      {opt} ({typ}, default {default!r}): {help_}", highlight=False)


@cli.command()
@click.argument("model")
@click.option("--method", "-m", required=True, help="Quantizer name (see `teeny list quantizer`).")
@click.option("--option", "-o", "opts", multiple=True, help="Quantizer option key=value (repeatable).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Artifact directory to create.")
@click.option("--calibrator", default="code", show_default=True, help="Calibrator for methods that need one.")
@click.option("--calibration-option", "-c", "cal_opts", multiple=True, help="Calibrator option key=value.")
@click.option("--seed", default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--dtype", default="auto", show_default=True)
def quantize(model: str, method: str, opts: tuple[str, ...], out: str, calibrator: str,
             cal_opts: tuple[str, ...], seed: int, device: str, dtype: str) -> None:
    """Quantize MODEL (HF directory, hub id or .gguf file) with one method into --out."""
    from teeny_core.modeling import resolve_source
    from teeny_core.store import staging_dir

    _quiet_libraries()
    q_cls = plugins().get("quantizer", method)
    options = q_cls.Options.from_mapping(parse_cli_options(opts), where=method)
    target = Path(out)
    if target.exists() and any(target.iterdir()):
        raise TeenyError(f"--out {out!r} exists and is not empty; choose a new directory")
    source = resolve_source(model, dtype=dtype, device=device)
    calibration = None
    if q_cls.needs_calibration:
        c_cls = plugins().get("calibrator", calibrator)
        c_opts = c_cls.Options.from_mapping(parse_cli_options(cal_opts), where=calibrator)
        calibration = c_cls().samples(source.load_tokenizer(), c_opts, seed=seed)
    with staging_dir(target) as tmp:
        made = q_cls().quantize(source, calibration, options, tmp)
        if not (tmp / "teeny-artifact.json").exists():
            made.save()
    click.echo(f"wrote {made.format} artifact to {target}")


def open_artifact(model: str):
    """An artifact directory, a checkpoint directory (float, GPTQ or AWQ), a .gguf file or a hub id, as an Artifact."""
    from teeny_core.checkpoints import open_checkpoint

    return open_checkpoint(model)


@cli.command(name="eval")
@click.argument("model")
@click.option("--bench", "-b", "benches", multiple=True, required=True, help="Evaluator name (repeatable).")
@click.option("--option", "-o", "opts", multiple=True, help="Evaluator option name.key=value or key=value.")
@click.option("--reference", help="Baseline model for comparisons (fidelity's KL and top-1).")
@click.option("--runtime", help="Runtime to load MODEL with (default: by artifact format).")
@click.option("--limit", default=0, help="Items per evaluator (0 = all).")
@click.option("--seed", default=0, show_default=True)
@click.option("--out", type=click.Path(file_okay=False), help="Where records go (default runs/eval/<hash>).")
def eval_cmd(model: str, benches: tuple[str, ...], opts: tuple[str, ...], reference: str | None,
             runtime: str | None, limit: int, seed: int, out: str | None) -> None:
    """Evaluate MODEL_OR_ARTIFACT with one or more evaluators; resumable, records kept in --out."""
    from teeny_core.store import SampleLog, StoreContext, options_signature, write_json

    _quiet_libraries()
    parsed = parse_cli_options(opts)
    per_bench: dict[str, dict[str, Any]] = {b: {} for b in benches}
    for key, value in parsed.items():
        bench, dot, name = key.partition(".")
        if dot and bench in per_bench:
            per_bench[bench][name] = value
        elif len(benches) == 1:
            per_bench[benches[0]][key] = value
        else:
            raise TeenyError(f"option {key!r} is ambiguous with several --bench; write it as BENCH.{key}")
    evaluators = {b: plugins().get("evaluator", b) for b in benches}
    options = {b: cls.Options.from_mapping(per_bench[b], where=b) for b, cls in evaluators.items()}
    artifact = open_artifact(model)
    ref_artifact = open_artifact(reference) if reference else None
    digest = hashlib.sha256(json.dumps([str(artifact.location), str(ref_artifact and ref_artifact.location),
                                        {b: o.to_dict() for b, o in options.items()}, limit, seed]).encode())
    out_dir = Path(out) if out else Path("runs") / "eval" / digest.hexdigest()[:12]
    rt_cls = plugins().runtime_for(artifact.format, runtime)
    loaded = rt_cls().load(artifact, rt_cls.Options())

    def load_reference():
        assert ref_artifact is not None
        cls = plugins().runtime_for(ref_artifact.format)
        return cls().load(ref_artifact, cls.Options())

    samples = SampleLog(out_dir / "samples.jsonl")
    metrics = {}
    with _progress() as progress:
        for bench, cls in evaluators.items():
            config = options_signature(bench, options[bench].to_dict())
            ctx = StoreContext(samples, bench, seed=seed, limit=limit or None, cache_dir=out_dir / "_cache",
                               config=config,
                               reference_loader=load_reference if ref_artifact else None,
                               reference_id=str(ref_artifact.location) if ref_artifact else str(artifact.location),
                               progress_factory=_bar_factory(progress))
            try:
                cls().evaluate(loaded, options[bench], ctx)
            finally:
                ctx.close()
            metrics[bench] = cls().summarize(samples.for_evaluator(bench, config), options[bench])
    loaded.close()
    write_json(out_dir / "metrics.json", metrics)
    for bench, values in metrics.items():
        click.echo(f"{bench}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in values.items() if not isinstance(v, dict)))
    click.echo(f"records: {out_dir / 'samples.jsonl'}")


@cli.command()
@click.argument("experiment", required=False, type=click.Path(dir_okay=False))
@click.option("--limit", type=int, help="Items per evaluator (overrides the file; 0 = all).")
@click.option("--fresh", is_flag=True, help="Delete this experiment's stored results first.")
def run(experiment: str | None, limit: int | None, fresh: bool) -> None:
    """Run EXPERIMENT (a TOML file; without one, the built-in demo) for every variant; resumable."""
    from teeny_core.experiment import build_experiment, load_experiment
    from teeny_core.pipeline import Pipeline, remove_run

    _quiet_libraries()
    overrides = {"limit": limit} if limit is not None else {}
    if experiment:
        exp = load_experiment(experiment, plugins(), overrides)
    else:
        from teeny_core.demo import demo_experiment

        exp = build_experiment({**demo_experiment(plugins()), **overrides}, plugins(), where="demo experiment")
    if fresh:
        remove_run(exp.root)
    with _progress() as progress:
        results = Pipeline(exp, plugins(), progress=progress, say=progress.console.print).run()
    print_results(results)
    report = exp.root / "report.md"
    click.echo(f"results: {exp.root / 'results.json'}" + (f"\nreport: {report}" if report.exists() else ""))


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
def report(run_dir: str) -> None:
    """Regenerate report.md, report.html and plots/ of RUN_DIR from its stored results."""
    from teeny_core.report import load_results, write_report

    results = load_results(Path(run_dir))
    print_results(results)
    for name, path in write_report(Path(run_dir), results).items():
        click.echo(f"{name}: {path}")


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--memory", required=True, help="Memory budget, e.g. 8GiB or 512MB.")
def recommend(run_dir: str, memory: str) -> None:
    """Name the best variant of RUN_DIR that fits a memory budget, and say why."""
    from teeny_core.report import load_results, recommend as pick

    variant, why = pick(load_results(Path(run_dir)), memory)
    click.echo(f"{variant['name']}: {why}")


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())


def _bar_factory(progress):
    from teeny_core.pipeline import _Bar

    return lambda total, description: _Bar(progress, progress.add_task(description, total=total))


def console():
    """A rich console; output that is not a terminal gets 200 columns so tables stay readable in logs."""
    from rich.console import Console

    out = Console()
    if not out.is_terminal:
        out.width = 200
    return out


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _size(n: int | None) -> str:
    if not n:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def headline(metrics: dict[str, Any]) -> list[tuple[str, Any]]:
    """The metrics worth a column: known headline names, else the first three numbers."""
    found = [(HEADLINE[k], metrics[k]) for k in HEADLINE if k in metrics]
    if not found:
        found = [(k, v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)][:3]
    return found


def print_results(results: dict[str, Any]) -> None:
    """The results table: one row per variant, headline metrics per evaluator, size, memory, speed."""
    from rich.table import Table

    variants = results["variants"]
    columns: list[tuple[str, str]] = []
    for v in variants:
        for ev, metrics in v["metrics"].items():
            for label, _ in headline(metrics):
                if (ev, label) not in columns:
                    columns.append((ev, label))
    table = Table(title=f"experiment {results['experiment']}")
    for header in ["variant", "method", "setting"] + [f"{ev}\n{label}" for ev, label in columns] + \
            ["size", "packed", "peak RSS", "tok/s"]:
        table.add_column(header)
    for v in variants:
        setting = " ".join(f"{k}={val}" if isinstance(val, bool) else str(val) for k, val in v["describe"].items())
        bench = v["profile"].get("benchmark", {})
        cells = [_fmt(dict(headline(v["metrics"].get(ev, {}))).get(label, "-")) for ev, label in columns]
        table.add_row(v["name"], v["method"], setting, *cells, _size(v.get("artifact_bytes")),
                      _size(v.get("packed_bytes")), _size(v["profile"].get("peak_rss_bytes")),
                      _fmt(bench.get("decode_tokens_per_s") or "-"))
    console().print(table)


def main() -> None:
    """Entry point: load plugin commands, then run the CLI."""
    plugins().add_commands(cli)
    cli(prog_name="teeny")


if __name__ == "__main__":
    main()
