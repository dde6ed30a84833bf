"""teeny-bench: code benchmarks for Teeny (HumanEval, HumanEval+, HumanEval-Mul, LiveCodeBench) and the sandbox
that runs the generated code."""

__version__ = "0.1.0"
