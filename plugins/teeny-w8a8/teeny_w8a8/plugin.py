"""Teeny hook implementations of teeny-w8a8 (light imports only)."""

from teeny_core import hookimpl


@hookimpl
def teeny_register_quantizers(register):
    from teeny_w8a8.quantizer import W8A8Quantizer

    register(W8A8Quantizer)
