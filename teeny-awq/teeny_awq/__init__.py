"""teeny-awq: activation-aware weight quantization for Teeny, exported as standard AutoAWQ GEMM checkpoints."""

__version__ = "0.1.0"
