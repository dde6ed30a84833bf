"""The default runtime for a format is the installed one that executes it natively on the device, fastest
first (its declared priority), not the first by name; a variant's named runtime always wins."""

import pytest

from teeny_core.builtin.transformers_runtime import TransformersRuntime
from teeny_core.errors import TeenyError
from teeny_core.plugins import Plugins, Registered
from teeny_core.types import Runtime


def runtime(name, formats, native=None, priority=None):
    attrs = {"name": name, "formats": formats, "native": native or {}, "load": lambda self, a, o: None,
             "__doc__": f"test runtime {name}"}
    if priority is not None:
        attrs["priority"] = classmethod(priority)
    return type(name.replace("-", "_"), (Runtime,), attrs)


@pytest.fixture
def plugins():
    found = Plugins()
    gpu_only = runtime("gpu-only", ("hf", "hf-gptq"), {("hf-gptq", "cuda"): 50, ("hf", "cuda"): 40},
                       priority=lambda cls, fmt, device: Runtime.priority.__func__(cls, fmt, device)
                       if device.startswith("cuda") else None)
    for cls in (TransformersRuntime,
                runtime("aaa-dequant", ("hf-gptq", "hf-awq")),                 # loads, never natively
                runtime("packed-cpu", ("hf-gptq", "hf-awq"), {("hf-gptq", "cpu"): 30, ("hf-awq", "cpu"): 30}),
                runtime("llama.cpp", ("gguf",), {("gguf", "*"): 20}),
                gpu_only):
        found.components["runtime"][cls.name] = Registered(cls, "test")
    return found


def test_the_native_runtime_wins_over_name_order(plugins):
    assert plugins.runtime_for("hf-gptq", device="cpu").name == "packed-cpu"
    assert plugins.runtime_for("hf-awq", device="cpu").name == "packed-cpu"
    assert plugins.runtime_for("gguf", device="cpu").name == "llama.cpp"  # not transformers' dequantizing load
    assert plugins.runtime_for("hf", device="cpu").name == "transformers"


def test_the_device_decides(plugins):
    assert plugins.runtime_for("hf-gptq", device="cuda").name == "gpu-only"
    assert plugins.runtime_for("hf", device="cuda:1").name == "gpu-only"
    assert plugins.runtime_for("gguf", device="cuda").name == "llama.cpp"  # "*" matches every device


def test_ties_among_non_native_runtimes_go_by_name(plugins):
    del plugins.components["runtime"]["gpu-only"]
    # on CUDA neither loader of hf-gptq runs it natively: priority 0 each, the first by name
    assert plugins.runtime_for("hf-gptq", device="cuda").name == "aaa-dequant"


def test_a_named_runtime_always_wins_and_must_load_the_format(plugins):
    assert plugins.runtime_for("hf-gptq", "transformers", device="cpu").name == "transformers"
    with pytest.raises(TeenyError, match="runtime 'llama.cpp' cannot load format 'hf'; it loads gguf"):
        plugins.runtime_for("hf", "llama.cpp", device="cpu")
    with pytest.raises(TeenyError, match="no available runtime loads artifact format 'onnx' on cpu"):
        plugins.runtime_for("onnx", device="cpu")


def test_priority_reads_native_by_device():
    assert TransformersRuntime.priority("hf", "cpu") == 10
    assert TransformersRuntime.priority("hf-gptq", "cuda") == 0  # dequantized on load: loads, not native
    assert TransformersRuntime.priority("exl2", "cpu") is None
