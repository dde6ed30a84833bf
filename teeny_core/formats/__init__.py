"""Checkpoint formats the core can read without extra plugins: GPTQ and AWQ packing (dequantize on load)."""
