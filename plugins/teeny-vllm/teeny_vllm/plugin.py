"""Hook implementations of teeny-vllm (light imports only: vllm loads when a model does)."""

from teeny_core import hookimpl


@hookimpl
def teeny_register_runtimes(register):
    from teeny_vllm.runtime import VllmRuntime

    register(VllmRuntime)
