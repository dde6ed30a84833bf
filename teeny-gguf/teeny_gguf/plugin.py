"""Teeny hook implementations of teeny-gguf (light imports only: components load llama.cpp when used)."""

from teeny_core import hookimpl


@hookimpl
def teeny_register_quantizers(register):
    from teeny_gguf.quantizer import GGUFQuantizer

    register(GGUFQuantizer)


@hookimpl
def teeny_register_runtimes(register):
    from teeny_gguf.runtime import LlamaCppRuntime

    register(LlamaCppRuntime)
