"""teeny-bench's hook implementations (light imports only: evaluator modules load when registered)."""

from teeny_core import hookimpl


@hookimpl
def teeny_register_evaluators(register):
    from teeny_bench.humaneval import HumanEval, HumanEvalPlus

    register(HumanEval)
    register(HumanEvalPlus)
    from teeny_bench.livecodebench import LiveCodeBenchEvaluator
    from teeny_bench.multipl_e import HumanEvalMulEvaluator

    register(HumanEvalMulEvaluator)
    register(LiveCodeBenchEvaluator)


@hookimpl
def teeny_register_commands(cli):
    from teeny_bench.check import bench

    cli.add_command(bench)
