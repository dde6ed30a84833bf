"""Checkpoint formats the core can read without extra plugins: GPTQ and AWQ packing (dequantize on load), and
GGUF headers (metadata and tensor table)."""
