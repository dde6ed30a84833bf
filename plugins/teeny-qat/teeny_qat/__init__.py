"""teeny-qat: quantization-aware training for Teeny, written as standard hf-gptq checkpoints."""

__version__ = "0.1.0"
