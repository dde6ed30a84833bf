"""Hook implementations of teeny-gptq (light imports only: torch loads when a quantization runs)."""

from teeny_core import hookimpl


@hookimpl
def teeny_register_quantizers(register):
    from teeny_gptq.quantizer import GPTQQuantizer

    register(GPTQQuantizer)
