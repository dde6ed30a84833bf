"""teeny-vllm: the ``vllm`` runtime (GPU serving engine) for Teeny artifacts."""

__version__ = "0.1.0"
