"""teeny-gguf: HF -> GGUF conversion, llama.cpp quantization with a teeny importance matrix, and the llama.cpp runtime."""

__version__ = "0.1.0"
