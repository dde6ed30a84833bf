"""Hook implementations of teeny-stats (light imports only: scipy and numpy load when a run uses them)."""

from teeny_core import hookimpl


@hookimpl
def teeny_register_analyzers(register):
    from teeny_stats.analyzer import SignificanceAnalyzer

    register(SignificanceAnalyzer)


@hookimpl
def teeny_register_commands(cli):
    from teeny_stats.cli import compare

    cli.add_command(compare)


@hookimpl
def teeny_report_sections(results, run_dir):
    from teeny_stats.report import report_sections

    return report_sections(results, run_dir)
