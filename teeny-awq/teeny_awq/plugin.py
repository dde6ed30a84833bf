"""Teeny hook implementations of teeny-awq (light imports only)."""

from teeny_core import hookimpl


@hookimpl
def teeny_register_quantizers(register):
    from teeny_awq.quantizer import AwqQuantizer

    register(AwqQuantizer)
