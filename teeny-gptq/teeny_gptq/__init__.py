"""teeny-gptq: the ``gptq`` quantizer plugin for Teeny (native torch GPTQ, standard GPTQ checkpoints)."""

__version__ = "0.1.0"
