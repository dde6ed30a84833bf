"""teeny-stats: paired significance tests of quantized variants against the original model."""

__version__ = "0.1.0"
