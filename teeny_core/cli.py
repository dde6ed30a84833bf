"""The ``teeny`` command line. Imports stay light: models load only inside commands that need them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import click

from teeny_core.errors import TeenyError, is_disk_full
from teeny_core.experiment import MAX_SEED
from teeny_core.modeling import DTYPES, quiet_libraries
from teeny_core.options import parse_cli_options
from teeny_core.cli_output import (Display, _bar_factory, _fmt, _progress, console, print_results,
                                   print_verdicts)
from teeny_core.plugins import KINDS, Plugins


class TeenyGroup(click.Group):
    """Turns :class:`TeenyError` (and a full disk, whoever hit it) into one ``Error:`` line and exit status 2.
    Plugins' commands are added only when a name that is not a core command is asked for, or all are listed."""

    _plugin_commands_added = False

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands:
            self.add_plugin_commands()
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self.add_plugin_commands()
        return super().list_commands(ctx)

    def add_plugin_commands(self) -> None:
        """Let the installed plugins add their commands (once)."""
        if not self._plugin_commands_added:
            self._plugin_commands_added = True
            plugins().add_commands(self)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:  # a bad option value of a command: one line too
            click.echo(f"Error: {exc.format_message()}", err=True)
            ctx.exit(2)
        except TeenyError as exc:
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(2)
        except Exception as exc:
            if is_disk_full(exc):
                click.echo(f"Error: no space left on the device ({' '.join(str(exc).split())[:160]}); free some "
                           "space and run the same command again (finished work is kept)", err=True)
            elif isinstance(exc, OSError):  # what no check before the work foresaw: still one line
                where = f"{str(exc.filename)[:120]}: " if exc.filename is not None else ""
                click.echo(f"Error: {where}{exc.strerror or exc}", err=True)
            else:
                raise
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


@cli.command(name="plugins")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--traceback", "tracebacks", is_flag=True, help="After the table, each broken plugin's traceback.")
def plugins_cmd(as_json: bool, tracebacks: bool) -> None:
    """Installed plugins: name, distribution and version, hooks, components; broken ones with their error."""
    cli.add_plugin_commands()  # a plugin whose command hook fails is broken too
    infos = list(plugins().infos.values())
    unavailable = {f"{kind}:{name}": reason for kind in KINDS for name, reason in plugins().unavailable(kind).items()}
    if as_json:
        click.echo(json.dumps([{**{k: v for k, v in vars(i).items() if k != "traceback"},
                                "unavailable": {c: unavailable[c] for c in i.components if c in unavailable}}
                               for i in infos], indent=2))
        return
    from rich.table import Table

    table = Table("plugin", "distribution", "version", "hooks", "components", "status")
    for i in infos:
        status = f"[red]broken: {i.error}[/red]" if i.error else ("built-in" if i.builtin else "ok")
        status += "".join(f"\n[yellow]{c} unavailable: {unavailable[c]}[/yellow]" for c in i.components
                          if c in unavailable)
        table.add_row(i.name, i.distribution, i.version, "\n".join(i.hooks), "\n".join(i.components), status)
    console().print(table)
    for i in infos if tracebacks else []:
        if i.error:
            click.echo(f"\n{i.name} ({i.distribution}): {i.error}\n{i.traceback or 'no traceback: ' + i.error}")


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
        unavailable = plugins().unavailable(k)
        for name in names:
            cls = plugins().get(k, name)
            out.print(f"  [cyan]{name}[/cyan]  {cls.summary()}")
            if name in unavailable:
                out.print(f"      [yellow]unavailable here: {unavailable[name]}[/yellow]", highlight=False)
            for opt, typ, default, help_ in cls.Options.describe():
                out.print(f"      {opt} ({typ}, default {default!r}): {help_}", highlight=False)


@cli.command()
@click.argument("model")
@click.option("--method", "-m", required=True, help="Quantizer name (see `teeny list quantizer`).")
@click.option("--option", "-o", "opts", multiple=True, help="Quantizer option key=value (repeatable).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Artifact directory to create.")
@click.option("--calibrator", default="code", show_default=True, help="Calibrator for methods that need one.")
@click.option("--calibration-option", "-c", "cal_opts", multiple=True, help="Calibrator option key=value.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, MAX_SEED))
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--dtype", default="auto", show_default=True, type=click.Choice(DTYPES),
              help="A .gguf MODEL's float copy, which the method reads: bfloat16 (auto), float16 or float32.")
def quantize(model: str, method: str, opts: tuple[str, ...], out: str, calibrator: str,
             cal_opts: tuple[str, ...], seed: int, device: str, dtype: str) -> None:
    """Quantize MODEL (HF directory, hub id or .gguf file) with one method into --out."""
    from teeny_core.modeling import Artifact, resolve_device, resolve_source
    from teeny_core.store import check_writable
    from teeny_core.worker import build_artifact

    quiet_libraries()
    q_cls = plugins().get("quantizer", method)
    options = q_cls.Options.from_mapping(parse_cli_options(opts), where=method)
    resolve_device(device)
    target = Path(out)
    check_writable(target, "--out")
    if target.exists() and any(target.iterdir()):
        raise TeenyError(f"--out {out!r} exists and is not empty; choose a new directory")
    source = resolve_source(model, dtype=dtype, device=device)
    calibration = None
    if q_cls.needs_calibration(options):
        c_cls = plugins().get("calibrator", calibrator)
        c_opts = c_cls.Options.from_mapping(parse_cli_options(cal_opts), where=calibrator)
        calibration = c_cls().samples(source.load_tokenizer(), c_opts, seed=seed)
    build_artifact(q_cls(), source, calibration, options, target)
    click.echo(f"wrote {Artifact.open(target).format} artifact to {target}")


@cli.command()
@click.argument("model")
@click.option("--method", "-m", type=click.Choice(["rtn", "gptq"]), default="rtn", show_default=True,
              help="How each module is quantized while measuring.")
@click.option("--option", "-o", "opts", multiple=True, help="bits=2,3,4,8, group_size=128, sym=false.")
@click.option("--calibrator", default="code", show_default=True, help="Calibrator giving the Hessian inputs.")
@click.option("--calibration-option", "-c", "cal_opts", multiple=True, help="Calibrator option key=value.")
@click.option("--fidelity-option", "-f", "fid_opts", multiple=True,
              help="Fidelity windows for the KL run: chunks=, chunk_len=, path=.")
@click.option("--kl/--no-kl", default=None, help="Also the full-model KL per module and bits (default: on for "
              "models under 100M parameters) and its rank correlation with the proxy.")
@click.option("--kl-sample", default=0, show_default=True, type=click.IntRange(min=0),
              help="With --kl: only this many (module, bits) pairs drawn with --seed (0: all), for the rank "
                   "correlation on models where every pair takes too long; plans then use the block error.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, MAX_SEED))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="JSON file to write (heatmap: .png).")
def sensitivity(model: str, method: str, opts: tuple[str, ...], calibrator: str, cal_opts: tuple[str, ...],
                fid_opts: tuple[str, ...], kl: bool | None, kl_sample: int, seed: int, out: str) -> None:
    """Per-module sensitivity of MODEL: damage per quantizable linear, decoder layer and bit-width."""
    from teeny_core.builtin.fidelity import FidelityOptions, token_chunks
    from teeny_core.modeling import resolve_source
    from teeny_core.sensitivity import SensitivityOptions, heatmap, measure
    from teeny_core.store import write_json
    from teeny_core.walker import parameter_count

    quiet_libraries()
    options = SensitivityOptions.from_mapping(parse_cli_options(opts), where="sensitivity")
    fidelity = FidelityOptions.from_mapping(parse_cli_options(fid_opts), where="fidelity")
    c_cls = plugins().get("calibrator", calibrator)
    c_opts = c_cls.Options.from_mapping(parse_cli_options(cal_opts), where=calibrator)
    target = Path(out)
    if not target.parent.is_dir():
        raise TeenyError(f"--out {out!r}: directory {str(target.parent)!r} does not exist")
    source = resolve_source(model)
    tokenizer = source.load_tokenizer()
    calibration = c_cls().samples(tokenizer, c_opts, seed=seed)
    if kl is None:
        kl = parameter_count(source) < 100_000_000
    windows = token_chunks(tokenizer, fidelity) if kl else None
    result = measure(source, calibration, method=method, bits_list=sorted(set(options.bits)),
                     group_size=options.group_size, windows=windows, seed=seed, kl=kl, sym=options.sym,
                     kl_sample=kl_sample)
    write_json(target, result)
    heatmap(result, target.with_suffix(".png"))
    line = f"measured {len(result['modules'])} modules x {len(result['bits'])} bit-widths in {result['seconds']} s"
    if "spearman_proxy_kl" in result:
        line += (f"; Spearman rank correlation with the full-model KL ({result['kl_pairs']} pairs): Hessian proxy "
                 f"{result['spearman_proxy_kl']:.3f}, block output error {result['spearman_block_kl']:.3f}")
    click.echo(line)
    click.echo(f"wrote {target} and {target.with_suffix('.png')}")


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
@click.option("--limit", default=0, type=click.IntRange(min=0), help="Items per evaluator (0 = all).")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, MAX_SEED))
@click.option("--out", type=click.Path(file_okay=False), help="Where records go (default runs/eval/<hash>).")
def eval_cmd(model: str, benches: tuple[str, ...], opts: tuple[str, ...], reference: str | None,
             runtime: str | None, limit: int, seed: int, out: str | None) -> None:
    """Evaluate MODEL_OR_ARTIFACT with one or more evaluators; resumable, records kept in --out."""
    from teeny_core.store import RunLock, SampleLog, check_writable, write_json

    quiet_libraries()
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
    check_writable(out_dir, "--out")
    from teeny_core.modeling import resolve_device

    rt_cls = plugins().runtime_for(artifact.format, runtime, resolve_device("auto"))
    with RunLock(out_dir):  # two evals into one --out would both write every record
        samples = SampleLog(out_dir / "samples.jsonl")  # read (and repaired) before the model loads
        metrics, facts = _evaluate(rt_cls, artifact, ref_artifact, evaluators, options, samples, limit, seed)
        write_json(out_dir / "metrics.json", metrics)
        write_json(out_dir / "profile.json", {"runtime": rt_cls.name,
                                              "load": {"runtime": {"name": rt_cls.name, **facts}}})
    click.echo(f"runtime: {rt_cls.name}, kernels: {facts.get('kernel_layers') or facts.get('kernels', 'float')}")
    for bench, values in metrics.items():
        click.echo(f"{bench}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in values.items() if not isinstance(v, dict)))
    click.echo(f"records: {out_dir / 'samples.jsonl'}")


def _evaluate(rt_cls, artifact, ref_artifact, evaluators: dict[str, Any], options: dict[str, Any], samples,
              limit: int, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """``teeny eval``'s work, under the run lock of its --out: each evaluator's records (into ``samples``, a
    :class:`~teeny_core.store.SampleLog`); returns its metrics and the runtime's load facts (which kernels ran)."""
    from teeny_core.modeling import resolve_device
    from teeny_core.store import options_signature
    from teeny_core.worker import evaluate

    out_dir = samples.path.parent
    loaded = rt_cls().load(artifact, rt_cls.Options())
    facts = getattr(loaded, "load_facts", dict)()  # which kernels run the weights, as in a run's profile.json

    def load_reference():
        assert ref_artifact is not None
        cls = plugins().runtime_for(ref_artifact.format, device=resolve_device("auto"))
        return cls().load(ref_artifact, cls.Options())

    metrics = {}
    with _progress() as progress:
        for bench, cls in evaluators.items():
            metrics[bench] = evaluate(
                loaded, bench, cls(), options[bench], samples,
                config=options_signature(bench, options[bench].to_dict(), cls.records_version), seed=seed,
                limit=limit, cache_dir=out_dir / "_cache", reference_loader=load_reference if ref_artifact else None,
                reference_id=str(ref_artifact.location) if ref_artifact else str(artifact.location),
                progress_factory=_bar_factory(progress))
    loaded.close()
    return metrics, facts


@cli.command()
@click.argument("experiment", required=False, type=click.Path(dir_okay=False))
@click.option("--limit", type=int, help="Items per evaluator (overrides the file; 0 = all).")
@click.option("--fresh", is_flag=True, help="Delete this experiment's stored results first.")
@click.option("--demo", type=click.Choice(["qwen", "gemma", "sizes"]), default=None,
              help="Which built-in demo runs without EXPERIMENT (default qwen: Qwen2.5-Coder-0.5B-Instruct; "
                   "gemma: Gemma 3 270M, for the smallest machines; sizes: Qwen2.5-Coder 0.5B and 1.5B, the "
                   "model-size study's short form, needs teeny-core[sizes]).")
@click.option("--executor", help="Where variants run (see `teeny list executor`; default: the file's, else local).")
@click.option("--address", help="The cluster the executor submits to, for executors that take one (ray: auto or "
                                "ray://host:port).")
def run(experiment: str | None, limit: int | None, fresh: bool, demo: str | None, executor: str | None,
        address: str | None) -> None:
    """Run EXPERIMENT (a TOML file; without one, the built-in demo) for every variant (of every model); resumable."""
    from teeny_core.pipeline import Pipeline
    from teeny_core.study import Study, build_run, load_run, run_study, study_lines

    overrides = {"limit": limit} if limit is not None else {}
    if experiment and demo:
        raise click.UsageError("pass EXPERIMENT or --demo, not both")
    if experiment:
        exp = load_run(experiment, plugins(), overrides)
    else:
        from teeny_core.demo import demo_experiment

        exp = build_run({**demo_experiment(plugins(), demo or "qwen"), **overrides}, plugins(),
                        where="demo experiment")
    for each in exp.experiments if isinstance(exp, Study) else [exp]:
        _executor_overrides(each, executor, address)
    with _progress() as progress:
        display = Display(progress)
        hooks = {"say": progress.console.print, "on_event": display.event, "on_outcome": display.finished}
        if isinstance(exp, Study):
            index = run_study(exp, plugins(), fresh=fresh, **hooks)
        else:
            every = {"": Pipeline(exp, plugins(), **hooks).run(fresh=fresh)}
    if isinstance(exp, Study):
        from teeny_core.study import load_study

        _, every = load_study(exp.root)
    failed = []
    for model, results in every.items():
        print_results(results)
        print_verdicts(results)
        failed += [f"{model}/{v['name']}" if model else v["name"] for v in results["variants"]
                   if v.get("status") == "failed"]
    if isinstance(exp, Study):
        for line in study_lines(index, every):
            click.echo(line)
    report = exp.root / "report.md"
    results_file = exp.root / ("study.json" if isinstance(exp, Study) else "results.json")
    click.echo(f"results: {results_file}" + (f"\nreport: {report}" if report.exists() else ""))
    if failed:
        click.echo(f"{len(failed)} variant(s) failed: {', '.join(failed)}; run the same command again to resume "
                   "them", err=True)
        raise SystemExit(1)


def _executor_overrides(exp, executor: str | None, address: str | None) -> None:
    """``--executor`` and ``--address`` applied to one experiment, each checked against the installed executors."""
    if executor:
        plugins().get("executor", executor)  # a one-line error listing the installed executors
        exp.executor = executor
    if address is not None:
        ex_cls = plugins().get("executor", exp.executor)
        if "address" not in {f.name for f in ex_cls.Options.fields()}:
            raise TeenyError(f"--address {address!r}: the {exp.executor!r} executor takes no cluster address")
        opts = exp.executor_options.get(exp.executor) or ex_cls.Options()
        exp.executor_options[exp.executor] = ex_cls.Options.from_mapping({**opts.to_dict(), "address": address},
                                                                         where=f"executor {exp.executor}")


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--format", "fmt", required=True, type=click.Choice(["lm-eval", "evalplus", "csv"]),
              help="lm-eval: results JSON and samples files in lm-evaluation-harness's layout; evalplus: a "
                   "samples.jsonl per variant for evalplus.evaluate; csv: the report's tables")
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False),
              help="folder to write into (default RUN_DIR/export/<format>)")
@click.option("--evaluator", default=None, help="evalplus: the evaluator whose completions to export "
                                                "(default humaneval-plus, else humaneval)")
def export(run_dir: str, fmt: str, out_dir: str | None, evaluator: str | None) -> None:
    """Write RUN_DIR's results in files lm-evaluation-harness, evalplus or a spreadsheet read."""
    from teeny_core.export import export as export_run
    from teeny_core.results import load_results

    if evaluator and fmt != "evalplus":
        raise TeenyError(f"--evaluator {evaluator} applies to --format evalplus only, not {fmt}")
    results = with_declarations(load_results(Path(run_dir)))
    out = Path(out_dir) if out_dir else Path(run_dir) / "export" / fmt
    for path in export_run(Path(run_dir), results, fmt, out, evaluator, plugins()):
        click.echo(str(path))


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
def report(run_dir: str) -> None:
    """Regenerate report.md, report.html and plots/ of RUN_DIR from its stored results."""
    from teeny_core.report import write_report
    from teeny_core.results import load_results
    from teeny_core.store import check_writable
    from teeny_core.study import is_study, load_study
    from teeny_core.study_report import write_study_report

    if is_study(Path(run_dir)):
        index, per_model = load_study(Path(run_dir))
        check_writable(Path(run_dir), "RUN_DIR")
        for name, path in write_study_report(Path(run_dir), index, per_model).items():
            click.echo(f"{name}: {path}")
        return
    results = with_declarations(load_results(Path(run_dir)))
    check_writable(Path(run_dir), "RUN_DIR")
    print_results(results)
    for name, path in write_report(Path(run_dir), results, plugins()).items():
        click.echo(f"{name}: {path}")


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--memory", required=True, help="Memory budget, e.g. 8GiB or 512MB.")
@click.option("--within", type=float, help="A run of several models: keep pass@1 within this many percentage "
                                           "points of the largest model's original (required there).")
def recommend(run_dir: str, memory: str, within: float | None) -> None:
    """Name the best variant of RUN_DIR that fits a memory budget, and say why; for a run of several models, the
    smallest model and variant shown to keep pass@1 within --within points."""
    from teeny_core.recommend import recommend as pick
    from teeny_core.results import load_results
    from teeny_core.study import is_study, load_study, recommend_across

    if is_study(Path(run_dir)):
        if within is None:
            raise TeenyError(f"{run_dir} is a run of several models; give --within N, the points of pass@1 the "
                             "answer may lose against the largest model's original")
        index, _ = load_study(Path(run_dir))
        variant, why = recommend_across(index, memory, within)
        click.echo(f"{variant['name']}: {why}")
        return
    if within is not None:
        raise TeenyError(f"--within applies to a run of several models; {run_dir} is a run of one")
    variant, why = pick(with_declarations(load_results(Path(run_dir))), memory)
    click.echo(f"{variant['name']}: {why}")


def with_declarations(results: dict[str, Any]) -> dict[str, Any]:
    """Results of a run from before evaluators' metric declarations were stored get the installed evaluators'."""
    if isinstance(results.get("evaluators"), dict):
        return results
    names = {ev for v in results.get("variants", []) if isinstance(v, dict)
             for ev in (v.get("metrics") or {}) if ev in plugins().components["evaluator"]}
    return {**results, "evaluators": {ev: plugins().get("evaluator", ev).declaration() for ev in sorted(names)}}




def main() -> None:
    """Entry point: run the CLI, then exit with its status whatever exit handlers a plugin registered (one that
    calls ``os._exit(0)`` runs as an error instead; the others run as usual)."""
    import atexit
    import os
    import posix
    import sys
    import threading

    try:
        cli(prog_name="teeny")
        code: Any = 0
    except SystemExit as exc:
        code = exc.code
    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    real_exit = os._exit

    def refuse(status: int = 0) -> None:
        raise RuntimeError(f"an exit handler called os._exit({status!r}); ignored, teeny exits with {code}")

    for thread in threading.enumerate():  # what the interpreter waits for before its exit handlers
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    os._exit = posix._exit = refuse  # type: ignore[assignment]
    atexit._run_exitfuncs()  # type: ignore[attr-defined]
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    real_exit(code)


if __name__ == "__main__":  # python -m teeny_core.cli: run the importable module's CLI, the one plugins see
    from teeny_core.cli import main as importable_main

    importable_main()
