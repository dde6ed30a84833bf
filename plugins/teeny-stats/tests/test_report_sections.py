"""teeny-stats presents its significance analysis in the run's report through the ``teeny_report_sections``
hook: the report, its HTML and its CSV tables are the same as before the core report knew nothing of it (saved
from the core report of before the split in data/report-golden/), and a plugin whose renderer breaks costs the
report only its own section."""

import csv
import json
import re
import shutil
from pathlib import Path

import pytest

import teeny_stats.plugin
from teeny_core import Block, ReportSection, hookimpl
from teeny_core.plugins import Plugins
from teeny_core.report import report_tables, write_report

GOLDEN = Path(__file__).parent / "data" / "report-golden"


def plugins_with(*modules) -> Plugins:
    plugins = Plugins()
    for name, module in modules:
        plugins.pm.register(module, name=name)
    return plugins


def stored_run(tmp_path: Path) -> tuple[Path, dict]:
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(GOLDEN / "results.json", run / "results.json")
    return run, json.loads((run / "results.json").read_text())


def without_images(page: str) -> str:
    return re.sub(r'src="data:image/png;base64,[^"]*"', 'src="data:image/png;base64,..."', page)


def test_report_with_the_stats_sections_is_the_same_as_before_the_split(tmp_path):
    pytest.importorskip("matplotlib", reason="the stored report has plots")
    run, results = stored_run(tmp_path)
    paths = write_report(run, results, plugins_with(("stats", teeny_stats.plugin)))
    assert paths["md"].read_text() == (GOLDEN / "report.md").read_text()
    assert without_images(paths["html"].read_text()) == (GOLDEN / "report.html").read_text()
    assert {"pareto", "errors-humaneval"} <= set(paths)


def test_csv_tables_are_the_same_as_before_the_split(tmp_path):
    run, results = stored_run(tmp_path)
    tables = report_tables(run, results, plugins_with(("stats", teeny_stats.plugin)))
    assert json.loads(json.dumps(tables)) == json.loads((GOLDEN / "tables.json").read_text())
    assert any(name.startswith("paired-comparisons-with-the-baseline-") for name, _, _ in tables)


def test_teeny_report_and_export_commands_render_the_installed_plugins_sections(tmp_path):
    pytest.importorskip("matplotlib", reason="the stored report has plots")
    from click.testing import CliRunner

    from teeny_core.cli import cli

    run, _ = stored_run(tmp_path)
    out = CliRunner().invoke(cli, ["report", str(run)])
    assert out.exit_code == 0, out.output
    assert (run / "report.md").read_text() == (GOLDEN / "report.md").read_text()
    out = CliRunner().invoke(cli, ["export", str(run), "--format", "csv", "-o", str(tmp_path / "csv")])
    assert out.exit_code == 0, out.output
    for name, headers, rows in json.loads((GOLDEN / "tables.json").read_text()):
        with open(tmp_path / "csv" / f"{name}.csv", newline="", encoding="utf-8") as f:
            assert list(csv.reader(f)) == [headers, *rows]


def test_the_core_alone_renders_no_significance_layout(tmp_path):
    run, results = stored_run(tmp_path)
    md = write_report(run, results)["md"].read_text()
    assert "## Paired comparisons with the baseline" not in md and "How the items a variant lost" not in md
    assert "Significance: alpha" not in md
    assert "## Results" in md and "## Manifest" in md and "| q2 | rtn | 2 |" in md  # the core's own sections


class Broken:
    @hookimpl
    def teeny_report_sections(self, results):
        raise RuntimeError("layout bug\nwith a second line")


class Extra:
    """Asks only for the arguments it uses; its section goes where its order says."""

    seen: dict = {}

    @hookimpl
    def teeny_report_sections(self, run_dir, plots):
        self.seen.update(run_dir=run_dir, plots=plots)
        return [ReportSection("Extra", [Block("p", "extra text"), Block("table", headers=["a"], rows=[["1"]])],
                              order=15)]


def test_a_renderer_that_raises_costs_only_its_own_section(tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)  # tables only
    monkeypatch.setitem(__import__("sys").modules, "matplotlib.figure", None)
    run, results = stored_run(tmp_path)
    extra = Extra()
    plugins = plugins_with(("broken", Broken()), ("stats", teeny_stats.plugin), ("extra", extra))
    paths = write_report(run, results, plugins)
    md = paths["md"].read_text()
    assert "The broken plugin's report section failed: RuntimeError: layout bug with a second line\n" in md
    assert "## Paired comparisons with the baseline" in md and "Significance: alpha 0.05" in md
    heads = re.findall(r"^## (.+)$", md, re.M)
    assert heads.index("Results") < heads.index("Extra") < heads.index("Failed variants")
    assert extra.seen == {"run_dir": run, "plots": True}
    assert "layout bug with a second line" in paths["html"].read_text()
    names = [name for name, _, _ in report_tables(run, results, plugins)]
    assert "extra" in names and extra.seen["plots"] is False


def test_a_renderer_returning_something_else_is_reported_not_rendered(tmp_path, monkeypatch):
    class Wrong:
        @hookimpl
        def teeny_report_sections(self):
            return "## not a section"

    run, results = stored_run(tmp_path)
    tables = report_tables(run, results, plugins_with(("wrong", Wrong())))
    md = write_report(run, results, plugins_with(("wrong", Wrong())))["md"].read_text()
    assert "The wrong plugin's report section failed: TypeError: teeny_report_sections returned str" in md
    assert "## not a section" not in md and tables
