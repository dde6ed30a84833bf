"""teeny-bench's hook implementations (light imports only: evaluator modules load when registered)."""

from teeny_core import hookimpl


@hookimpl
def teeny_register_evaluators(register):
    from teeny_bench.humaneval import HumanEval, HumanEvalPlus

    register(HumanEval)
    register(HumanEvalPlus)
    # humaneval-mul and livecodebench: their module owners register them here, one import + register each.


@hookimpl
def teeny_register_commands(cli):
    from teeny_bench.check import bench

    cli.add_command(bench)
