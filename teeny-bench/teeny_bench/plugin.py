"""teeny-bench's hook implementations (light imports only: evaluator modules load when registered)."""

from teeny_core import hookimpl


@hookimpl
def teeny_register_evaluators(register):
    # One registration per evaluator module; owners of humaneval-mul and livecodebench add theirs below.
    pass


@hookimpl
def teeny_register_commands(cli):
    from teeny_bench.check import bench

    cli.add_command(bench)
