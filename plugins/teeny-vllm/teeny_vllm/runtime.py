"""The ``vllm`` runtime: hf, hf-gptq (Marlin), hf-awq and gguf artifacts served by vLLM on a CUDA GPU.

vLLM is imported only when a model loads (it pins its own CUDA build of torch and is never a dependency
of the CPU environment). Generation goes through vLLM's batched ``LLM.generate``; vLLM returns top-k
logprobs, not full distributions, so fidelity (KL) stays on an exact runtime (transformers or llama.cpp).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import time
from pathlib import Path
from typing import Any, Literal

from teeny_core import Artifact, Generation, LoadedModel, Options, Runtime, TeenyError, option

MARLIN_GROUP_SIZES = (-1, 32, 64, 128)
NO_LOGPROBS = ("the vllm runtime returns top-k logprobs, not full distributions: score fidelity (KL) "
               "with the transformers or llama.cpp runtime")


@dataclasses.dataclass
class VllmOptions(Options):
    gpu_memory_utilization: float = option(0.85, "fraction of GPU memory vLLM may take (weights + KV cache)",
                                           min=0.05, max=1.0)
    max_model_len: int = option(4096, "context length: prompt + generated tokens", min=16)
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = option(
        "auto", "compute dtype (auto: the checkpoint's; float16 for quantized checkpoints)")
    enforce_eager: bool = option(False, "skip CUDA graph capture (faster load, slower decode)")
    tensor_parallel_size: int = option(1, "GPUs to shard the model over", min=1)
    marlin: bool = option(True, "use the Marlin kernels for hf-gptq and hf-awq where vLLM supports the grid")


def cuda_unavailable_reason() -> str | None:
    """Why no CUDA GPU can be used here, or None; reads the driver's files, imports nothing heavy."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return "CUDA_VISIBLE_DEVICES hides every GPU"
    if not Path("/proc/driver/nvidia/version").exists():
        return "no NVIDIA GPU driver on this machine (/proc/driver/nvidia/version is missing)"
    return None


def quantization_config(directory: Path) -> dict[str, Any]:
    """The ``quantization_config`` of an hf-gptq / hf-awq checkpoint directory (``{}`` when absent)."""
    config = directory / "config.json"
    if not config.is_file():
        raise TeenyError(f"{config} not found; expected a Hugging Face checkpoint directory")
    return json.loads(config.read_text()).get("quantization_config") or {}


def vllm_quantization(artifact: Artifact, marlin: bool = True) -> str | None:
    """vLLM's ``quantization`` for an artifact: the Marlin kernels where they execute its grid."""
    if artifact.format in ("hf", "gguf"):
        return None if artifact.format == "hf" else "gguf"
    qc = quantization_config(artifact.path)
    bits = int(qc.get("bits", qc.get("w_bit", 0)))
    marlin = marlin and int(qc.get("group_size", qc.get("q_group_size", -1))) in MARLIN_GROUP_SIZES
    if artifact.format == "hf-gptq":
        # Marlin runs symmetric 4- and 8-bit GPTQ (act-order included); other grids use the GPTQ kernels.
        return "gptq_marlin" if marlin and bits in (4, 8) and qc.get("sym", True) else "gptq"
    if artifact.format == "hf-awq":
        return "awq_marlin" if marlin and bits == 4 else "awq"
    raise TeenyError(f"the vllm runtime cannot load format {artifact.format!r}; it loads {', '.join(VllmRuntime.formats)}")


def engine_args(artifact: Artifact, options: VllmOptions, seed: int = 0) -> dict[str, Any]:
    """Keyword arguments of ``vllm.LLM`` that load ``artifact`` as vLLM serves that format."""
    if artifact.format not in VllmRuntime.formats:
        raise TeenyError(f"the vllm runtime cannot load format {artifact.format!r}; it loads {', '.join(VllmRuntime.formats)}")
    args: dict[str, Any] = {
        "model": str(artifact.location), "tokenizer": str(artifact.path), "dtype": options.dtype, "seed": seed,
        "gpu_memory_utilization": options.gpu_memory_utilization, "max_model_len": options.max_model_len,
        "enforce_eager": options.enforce_eager, "tensor_parallel_size": options.tensor_parallel_size,
    }
    quantization = vllm_quantization(artifact, options.marlin)
    if quantization is not None:
        args["quantization"] = quantization
    if artifact.format == "gguf":
        if not artifact.location.is_file():
            raise TeenyError(f"GGUF file {str(artifact.location)!r} not found")
        if not (artifact.path / "tokenizer_config.json").is_file():
            args["tokenizer"] = str(artifact.location)  # the tokenizer inside the GGUF (slower to build)
    elif options.dtype == "auto" and quantization is not None:
        args["dtype"] = "float16"  # the GPTQ/AWQ kernels compute in float16
    return args


def sampling_params(max_new_tokens: int, temperature: float, top_p: float, stop: list[str] | None,
                    seed: int) -> dict[str, Any]:
    """Keyword arguments of ``vllm.SamplingParams`` for one prompt under Teeny's generation options.

    Greedy when temperature is 0 (top_p then has no effect); stop strings end the text and are not
    included, like every Teeny runtime.
    """
    if max_new_tokens < 1:
        raise TeenyError(f"max_new_tokens={max_new_tokens} is not valid; expected at least 1")
    greedy = temperature == 0
    return {"n": 1, "max_tokens": max_new_tokens, "temperature": 0.0 if greedy else temperature,
            "top_p": 1.0 if greedy else top_p, "seed": seed,
            "stop": list(stop or []) or None, "include_stop_str_in_output": False, "skip_special_tokens": True}


class VllmModel(LoadedModel):
    """A model in a vLLM engine (in this process, so its GPU memory is this process's)."""

    def __init__(self, llm: Any) -> None:
        self.llm = llm
        self._tokenizer = llm.get_tokenizer()

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    def generate(self, prompts: list[str], *, max_new_tokens: int = 256, temperature: float = 0.0,
                 top_p: float = 1.0, stop: list[str] | None = None, seed: int = 0) -> list[Generation]:
        from vllm import SamplingParams

        # Tokenized here exactly as the other runtimes do, so the prompts are the same token ids.
        requests = [{"prompt_token_ids": list(self._tokenizer.encode(p))} for p in prompts]
        params = [SamplingParams(**sampling_params(max_new_tokens, temperature, top_p, stop, seed + i))
                  for i in range(len(prompts))]
        t0 = time.perf_counter()
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        seconds = time.perf_counter() - t0  # one batch: every request ran for the whole call
        return [Generation(text=o.outputs[0].text, tokens=len(o.outputs[0].token_ids),
                           finish_reason="length" if o.outputs[0].finish_reason == "length" else "stop",
                           seconds=seconds, first_token_seconds=_first_token_seconds(o))
                for o in outputs]

    def logprobs(self, token_ids: list[list[int]]):
        raise TeenyError(NO_LOGPROBS)

    def weight_bytes(self) -> int:
        """Bytes of parameters and buffers as vLLM holds them on the GPU (packed for GPTQ/AWQ/GGUF)."""
        return int(sum(self.llm.apply_model(_module_bytes)))

    def peak_gpu_bytes(self) -> int:
        """Peak GPU memory allocated by this process so far (weights, activations and the KV cache pool)."""
        import torch

        return int(torch.cuda.max_memory_allocated())

    def close(self) -> None:
        import gc

        import torch

        del self.llm
        gc.collect()
        torch.cuda.empty_cache()


def _module_bytes(model: Any) -> int:
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def _first_token_seconds(output: Any) -> float | None:
    metrics = getattr(output, "metrics", None)
    first, arrival = getattr(metrics, "first_token_time", None), getattr(metrics, "arrival_time", None)
    return first - arrival if first is not None and arrival is not None else None


class VllmRuntime(Runtime[VllmOptions]):
    """vLLM on a CUDA GPU: hf, hf-gptq (Marlin), hf-awq (Marlin) and gguf, with batched generation."""

    name = "vllm"
    Options = VllmOptions
    formats = ("hf", "hf-gptq", "hf-awq", "gguf")
    # The fastest runtime on a GPU for checkpoints (Marlin kernels, batched); GGUF in vLLM is experimental, so a
    # CUDA build of llama.cpp (priority 20) keeps GGUF files.
    native = {("hf", "cuda"): 30, ("hf-gptq", "cuda"): 30, ("hf-awq", "cuda"): 30, ("gguf", "cuda"): 15}

    @classmethod
    def available(cls) -> str | None:
        reason = cuda_unavailable_reason()
        if reason:
            return reason
        if importlib.util.find_spec("vllm") is None:
            return "vllm is not installed (pip install vllm==0.33 in a CUDA environment)"
        return None

    def load(self, artifact: Artifact, options: VllmOptions) -> LoadedModel:
        reason = self.available()
        if reason:
            raise TeenyError(f"the vllm runtime is unavailable here: {reason}")
        args = engine_args(artifact, options)
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine in this process: its memory is ours
        from vllm import LLM

        return VllmModel(LLM(**args))
