"""Teeny hook implementations of teeny-qat (light imports only)."""

from teeny_core import hookimpl


@hookimpl
def teeny_register_quantizers(register):
    from teeny_qat.quantizer import QatQuantizer

    register(QatQuantizer)
