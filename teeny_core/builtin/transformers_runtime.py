"""Built-in ``transformers`` runtime: hf and gguf artifacts as float models; hf-gptq / hf-awq with packed int4
kernels on CPU or CUDA (``kernels="packed"``, see :mod:`teeny_core.packed` and :mod:`teeny_core.packed_cuda`)
or dequantized to float on load."""

from __future__ import annotations

import dataclasses
import importlib
import time
from typing import Any, Literal

from teeny_core import hookimpl
from teeny_core.errors import TeenyError
from teeny_core.modeling import Artifact
from teeny_core.options import Options, option
from teeny_core.types import Generation, LoadedModel, Runtime


@dataclasses.dataclass
class TransformersOptions(Options):
    device: str = option("auto", "cpu, cuda, cuda:N, or auto (cuda when available)")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = option(
        "auto", "dtype the weights are held and computed in (auto: the checkpoint's; a GGUF file's: bfloat16)")
    batch_size: int = option(8, "prompts or sequences per forward batch", min=1)
    kernels: Literal["packed", "dequant"] = option(
        "packed", "hf-gptq/hf-awq on CPU or CUDA: keep weights packed and use int4 kernels, or dequantize to float "
                  "on load")
    packed_compute: Literal["bfloat16", "float32"] = option(
        "bfloat16", "activation dtype inside packed linears (bfloat16: the kernel's fast path; float32: exact, slower, "
                   "CPU only)")


def truncate_at_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    """Cut ``text`` at the earliest stop string; say whether one was found."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


class TransformersModel(LoadedModel):
    """A transformers causal LM with batched generation and scoring."""

    def __init__(self, model: Any, tokenizer: Any, batch_size: int, facts: dict[str, Any] | None = None) -> None:
        self.model, self._tokenizer, self.batch_size = model, tokenizer, batch_size
        self.facts = dict(facts or {})
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.device = next(model.parameters()).device

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    def generate(self, prompts: list[str], *, max_new_tokens: int = 256, temperature: float = 0.0,
                 top_p: float = 1.0, stop: list[str] | None = None, seed: int = 0) -> list[Generation]:
        import torch

        stop = list(stop or [])
        tok = self._tokenizer
        tok.padding_side = "left"
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths pad less
        results: dict[int, Generation] = {}
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            batch = tok([prompts[i] for i in idx], return_tensors="pt", padding=True).to(self.device)
            kwargs: dict[str, Any] = dict(max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id)
            if temperature > 0:
                torch.manual_seed(seed + start)
                kwargs.update(do_sample=True, temperature=temperature, top_p=top_p)
            else:
                kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
            if stop:
                kwargs.update(stop_strings=stop, tokenizer=tok)
            t0 = time.perf_counter()
            with torch.no_grad():
                out = self.model.generate(**batch, **kwargs)
            seconds = (time.perf_counter() - t0) / len(idx)
            new = out[:, batch["input_ids"].shape[1]:]
            for row, i in enumerate(idx):
                ids = new[row].tolist()
                eos_hit = False
                if tok.eos_token_id in ids:
                    ids, eos_hit = ids[:ids.index(tok.eos_token_id)], True
                while ids and ids[-1] == tok.pad_token_id:
                    ids.pop()
                text, stopped = truncate_at_stop(tok.decode(ids, skip_special_tokens=True), stop)
                finish = "stop" if (stopped or eos_hit) else "length"
                results[i] = Generation(text=text, tokens=len(ids), finish_reason=finish, seconds=seconds)
        return [results[i] for i in range(len(prompts))]

    def logprobs(self, token_ids: list[list[int]]):
        import torch

        outs = []
        with torch.no_grad():
            for start in range(0, len(token_ids), self.batch_size):
                ids = torch.tensor(token_ids[start:start + self.batch_size], device=self.device)
                logits = self.model(input_ids=ids).logits
                outs.append(torch.log_softmax(logits.float(), dim=-1).cpu())
        return torch.cat(outs)

    def weight_bytes(self) -> int:
        """Bytes of the parameters and buffers as held (packed codes at their packed size)."""
        from teeny_core.packed import tensor_bytes

        return tensor_bytes(self.model)

    def load_facts(self) -> dict[str, Any]:
        """How the weights are held: ``kernels`` and, for packed loads, the layers that stayed float and why."""
        return {**self.facts, "weight_bytes": self.weight_bytes()}

    def close(self) -> None:
        import gc

        del self.model
        gc.collect()


def _format_module(artifact: Artifact):
    return importlib.import_module(f"teeny_core.formats.{artifact.format.split('-', 1)[1]}")


def load_dequantized(artifact: Artifact, dtype):
    """Build the model from an hf-gptq / hf-awq checkpoint with float weights from its packed tensors."""
    from transformers import AutoModelForCausalLM

    from teeny_core.experts import fuse_model_experts
    from teeny_core.formats.checkpoint import config_without_quantization, load_state

    model = AutoModelForCausalLM.from_config(config_without_quantization(artifact), dtype=dtype)
    state = {k: (v.to(dtype) if v.is_floating_point() else v)
             for k, v in _format_module(artifact).dequantized_state_dict(artifact.path).items()}
    load_state(model, fuse_model_experts(state, model.config.model_type), artifact, set(), False)
    return model


def load_packed(artifact: Artifact, dtype, compute: str, device: str = "cpu"):
    """Build the model from an hf-gptq / hf-awq checkpoint with its quantized linears packed for ``device``'s int4
    kernel (float weights only where the kernel cannot express a layer). Returns ``(model, facts)``."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    from teeny_core.experts import fuse_model_experts
    from teeny_core.formats.checkpoint import config_without_quantization, load_state
    from teeny_core.packed import pack_linears

    linears, rest = _format_module(artifact).read_quantized(artifact.path)
    with init_empty_weights():  # no float copy of the quantized weights is ever allocated
        model = AutoModelForCausalLM.from_config(config_without_quantization(artifact), dtype=dtype)
    packed_names, fallback, reasons = pack_linears(model, linears, compute, device)
    state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in {**rest, **fallback}.items()}
    state = fuse_model_experts(state, model.config.model_type)
    packed = set(packed_names)
    load_state(model, state, artifact, packed, True)
    meta = [n for n, p in model.named_parameters() if p.is_meta]
    if meta:
        raise TeenyError(f"{artifact.path}: no weights in the checkpoint for {meta[:3]}")
    facts = {"kernels": "packed", "packed_compute": compute, "packed_layers": len(packed),
             "float_layers": reasons}
    return model.to(device).eval(), facts


def packed_available(device: str = "cpu") -> bool:
    """Whether torch has the int4 kernel for ``device`` (imported lazily)."""
    from teeny_core.packed import available

    return available(device)


class TransformersRuntime(Runtime[TransformersOptions]):
    """PyTorch + transformers on CPU or CUDA; GPTQ/AWQ checkpoints run packed (int4 kernels) or dequantized."""

    name = "transformers"
    Options = TransformersOptions
    formats = ("hf", "hf-gptq", "hf-awq", "gguf", "compressed-tensors")
    # packed (see priority()); compressed-tensors W8A8 runs torch._int_mm on CPU and CUDA
    native = {("hf", "*"): 10, ("hf-gptq", "*"): 10, ("hf-awq", "*"): 10, ("compressed-tensors", "*"): 10}

    @classmethod
    def import_libraries(cls) -> None:
        import torch  # noqa: F401
        from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401

    def load(self, artifact: Artifact, options: TransformersOptions) -> LoadedModel:
        from transformers import AutoTokenizer

        from teeny_core.modeling import ModelSource, load_hf_model, resolve_device, torch_dtype
        from teeny_core.walker import stored_dtype

        device = resolve_device(options.device)
        dtype = options.dtype
        facts: dict[str, Any] = {"kernels": "float"}
        if artifact.format in ("hf", "gguf"):
            source = ModelSource(str(artifact.path), gguf_file=artifact.file if artifact.format == "gguf" else None)
            model, tokenizer = load_hf_model(source, dtype=dtype, device=device)
        elif artifact.format == "compressed-tensors":  # int8/FP8 products and int4 kernels, see that module
            from teeny_core.formats.compressed_tensors import load

            compute = torch_dtype(dtype if dtype != "auto" else stored_dtype(artifact.path))
            model, facts = load(artifact, compute, device, options.packed_compute)
            tokenizer = AutoTokenizer.from_pretrained(artifact.path)
        else:
            packed = options.kernels == "packed" and packed_available(device)
            if packed and device != "cpu" and options.packed_compute != "bfloat16":
                raise TeenyError(f"packed_compute={options.packed_compute} on {device}: the CUDA int4 kernel "
                                 "takes bfloat16 activations only (use packed_compute=bfloat16 or kernels=dequant)")
            compute = torch_dtype(dtype if dtype != "auto" else stored_dtype(artifact.path))
            if packed:
                model, facts = load_packed(artifact, compute, options.packed_compute, device)
            else:
                model = load_dequantized(artifact, compute)
                model.to(device).eval()
                facts = {"kernels": "dequant"}
            tokenizer = AutoTokenizer.from_pretrained(artifact.path)
        return TransformersModel(model, tokenizer, options.batch_size, facts)

    @classmethod
    def priority(cls, fmt: str, device: str) -> int | None:
        """hf anywhere, and hf-gptq/hf-awq where torch has the packed int4 kernel for the device, run natively;
        the rest (hf-gptq/hf-awq without the kernel, gguf) is dequantized to float on load."""
        if fmt in ("hf-gptq", "hf-awq") and not packed_available(device):
            return 0
        return super().priority(fmt, device)


@hookimpl
def teeny_register_runtimes(register):
    register(TransformersRuntime)
