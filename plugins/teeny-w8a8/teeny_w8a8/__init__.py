"""Teeny plugin: the ``w8a8`` quantizer (int8 or FP8 weights and activations, written as compressed-tensors)."""
