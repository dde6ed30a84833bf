"""The ``llama.cpp`` runtime: loads ``gguf`` artifacts with llama-cpp-python for generation and scoring."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from teeny_core import Artifact, Generation, LoadedModel, Options, Runtime, TeenyError, option


@dataclasses.dataclass
class LlamaCppOptions(Options):
    n_threads: int = option(0, "CPU threads (0: TEENY_THREADS or all cores)", min=0)
    n_gpu_layers: int = option(0, "layers offloaded to the GPU (-1: all; needs a GPU build of llama-cpp-python)", min=-1)
    n_ctx: int = option(0, "context length: prompt + generated tokens, and the longest scored sequence "
                           "(0: the model's training context, at most 4096)", min=0)
    n_batch: int = option(512, "tokens per llama_decode call", min=1)
    hf_tokenizer: bool = option(True, "use the HF tokenizer saved beside the GGUF when there is one (exact)")


class LlamaCppModel(LoadedModel):
    """A GGUF model in llama.cpp; scoring decodes with logits for every position."""

    def __init__(self, path: Path, options: LlamaCppOptions, tokenizer_dir: Path | None) -> None:
        import llama_cpp

        from teeny_core.modeling import num_threads

        n_ctx = options.n_ctx or min(4096, _trained_context(path))
        self.llm = llama_cpp.Llama(
            model_path=str(path), n_ctx=n_ctx, n_batch=options.n_batch, n_ubatch=options.n_batch,
            n_threads=options.n_threads or num_threads(), n_gpu_layers=options.n_gpu_layers,
            logits_all=False, verbose=False)
        self.n_ctx, self.path = n_ctx, path
        if tokenizer_dir is not None:
            from transformers import AutoTokenizer

            self._tokenizer: Any = AutoTokenizer.from_pretrained(tokenizer_dir)
        else:
            self._tokenizer = GGUFTokenizer(self.llm)

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    def generate(self, prompts: list[str], *, max_new_tokens: int = 256, temperature: float = 0.0,
                 top_p: float = 1.0, stop: list[str] | None = None, seed: int = 0) -> list[Generation]:
        return [self._generate_one(p, max_new_tokens, temperature, top_p, list(stop or []), seed + i)
                for i, p in enumerate(prompts)]

    def _generate_one(self, prompt: str, max_new_tokens: int, temperature: float, top_p: float,
                      stop: list[str], seed: int) -> Generation:
        import llama_cpp

        from teeny_core.builtin.transformers_runtime import truncate_at_stop

        ids = list(self._tokenizer.encode(prompt))
        if len(ids) + max_new_tokens > self.n_ctx:
            raise TeenyError(f"prompt ({len(ids)} tokens) + max_new_tokens ({max_new_tokens}) exceed n_ctx={self.n_ctx}; "
                             "raise the runtime option n_ctx")
        self.llm.set_seed(seed)
        out: list[int] = []
        finish, first = "length", None
        t0 = time.perf_counter()
        if max_new_tokens > 0:
            for token in self.llm.generate(ids, temp=temperature, top_p=top_p, top_k=0, min_p=0.0,
                                           typical_p=1.0, repeat_penalty=1.0, reset=True):
                if first is None:
                    first = time.perf_counter() - t0
                if llama_cpp.llama_vocab_is_eog(self.llm._model.vocab, token):
                    finish = "stop"
                    break
                out.append(token)
                if stop and truncate_at_stop(self._decode(out), stop)[1]:
                    finish = "stop"
                    break
                if len(out) >= max_new_tokens:
                    break
        seconds = time.perf_counter() - t0
        text, _ = truncate_at_stop(self._decode(out), stop)
        return Generation(text=text, tokens=len(out), finish_reason=finish, seconds=seconds,
                          first_token_seconds=first)

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True)

    def logits(self, token_ids: list[int]):
        """Raw float32 logits [seq, vocab] for one sequence, every position (numpy)."""
        import numpy as np

        n = len(token_ids)
        if n > self.n_ctx:
            raise TeenyError(f"sequence of {n} tokens is longer than n_ctx={self.n_ctx}; raise the runtime option n_ctx")
        vocab = self.llm.n_vocab()
        out = np.empty((n, vocab), dtype=np.float32)
        llm = self.llm
        llm.reset()
        llm._ctx.kv_cache_seq_rm(-1, 0, -1)
        try:
            for start in range(0, n, llm.n_batch):
                chunk = list(token_ids[start:start + llm.n_batch])
                llm._batch.set_batch(batch=chunk, n_past=start, logits_all=True)
                llm._ctx.decode(llm._batch)
                out[start:start + len(chunk)] = np.ctypeslib.as_array(
                    llm._ctx.get_logits(), shape=(len(chunk) * vocab,)).reshape(len(chunk), vocab)
        finally:
            llm.reset()  # the next generate() re-evaluates its prompt from position 0
        return out

    def logprobs(self, token_ids: list[list[int]]):
        import torch

        rows = [torch.log_softmax(torch.from_numpy(self.logits(ids)).double(), dim=-1).float() for ids in token_ids]
        return torch.stack(rows)

    def weight_bytes(self) -> int:
        """The GGUF's tensor data, which llama.cpp maps and computes on as stored (quantized blocks)."""
        from teeny_core.formats.gguf_header import read_gguf_header

        return sum(t.n_bytes for t in read_gguf_header(self.path).tensors)

    def close(self) -> None:
        if isinstance(self._tokenizer, GGUFTokenizer):
            self._tokenizer.detach()
        self.llm.close()


class GGUFTokenizer:
    """An HF-style tokenizer over llama.cpp's own (for GGUF files without HF tokenizer files beside them)."""

    def __init__(self, llm) -> None:
        self._llm = llm
        meta = llm.metadata
        self.chat_template: str | None = meta.get("tokenizer.chat_template")
        self.add_bos = meta.get("tokenizer.ggml.add_bos_token", "false") == "true"
        self.bos_token_id = _maybe_int(meta.get("tokenizer.ggml.bos_token_id"))
        self.eos_token_id = _maybe_int(meta.get("tokenizer.ggml.eos_token_id"))
        self.pad_token_id = _maybe_int(meta.get("tokenizer.ggml.padding_token_id"))
        if self.pad_token_id is None:
            self.pad_token_id = self.eos_token_id

    @property
    def llm(self):
        if self._llm is None:
            raise TeenyError("the llama.cpp model behind this tokenizer was closed")
        return self._llm

    def detach(self) -> None:
        """Forget the model (it is being closed): later use raises instead of touching freed memory."""
        self._llm = None

    def __len__(self) -> int:
        return self.llm.n_vocab()

    def _piece(self, token_id: int | None) -> str:
        if token_id is None:
            return ""
        return self.llm.detokenize([token_id], special=True).decode("utf-8", errors="replace")

    @property
    def bos_token(self) -> str:
        return self._piece(self.bos_token_id)

    @property
    def eos_token(self) -> str:
        return self._piece(self.eos_token_id)

    @property
    def all_special_ids(self) -> list[int]:
        """Ids of control tokens (BOS, EOS, chat markers...)."""
        import llama_cpp

        vocab = self.llm._model.vocab
        return [i for i in range(self.llm.n_vocab())
                if llama_cpp.llama_vocab_get_attr(vocab, i) & llama_cpp.LLAMA_TOKEN_ATTR_CONTROL]

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=add_special_tokens and self.add_bos, special=True)

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return self.llm.detokenize(list(ids), special=not skip_special_tokens).decode("utf-8", errors="replace")

    def apply_chat_template(self, messages: list[dict[str, str]], add_generation_prompt: bool = False,
                            tokenize: bool = True, **kwargs: Any):
        """Render the GGUF's chat template (sandboxed Jinja, as transformers does)."""
        if not self.chat_template:
            raise TeenyError("this GGUF file has no chat template (tokenizer.chat_template)")
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str):
            raise TeenyError(f"chat template error: {message}")

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        text = env.from_string(self.chat_template).render(
            messages=messages, add_generation_prompt=add_generation_prompt, bos_token=self.bos_token,
            eos_token=self.eos_token, **kwargs)
        return self.encode(text, add_special_tokens=False) if tokenize else text


def _trained_context(path: Path) -> int:
    """``<arch>.context_length`` from the GGUF header (4096 when absent)."""
    from teeny_core.formats.gguf_header import read_gguf_header

    metadata = read_gguf_header(path).metadata
    return int(metadata.get(f"{metadata.get('general.architecture')}.context_length", 4096))


def _maybe_int(value: Any) -> int | None:
    return int(value) if value not in (None, "") else None


class LlamaCppRuntime(Runtime[LlamaCppOptions]):
    """llama.cpp through llama-cpp-python: GGUF files on CPU (and GPU with a GPU build), any quantization type."""

    name = "llama.cpp"
    Options = LlamaCppOptions
    formats = ("gguf",)
    native = {("gguf", "*"): 20}  # its own quantized kernels, on CPU and (GPU builds) CUDA

    @classmethod
    def import_libraries(cls) -> None:
        import llama_cpp  # noqa: F401
        import torch  # noqa: F401  (logprobs returns torch tensors)

    def load(self, artifact: Artifact, options: LlamaCppOptions) -> LoadedModel:
        path = artifact.location
        if not path.is_file():
            raise TeenyError(f"GGUF file {str(path)!r} not found")
        tokenizer_dir = artifact.path if options.hf_tokenizer and _has_hf_tokenizer(artifact.path) else None
        return LlamaCppModel(path, options, tokenizer_dir)


def _has_hf_tokenizer(directory: Path) -> bool:
    return (directory / "tokenizer_config.json").is_file() and (
        (directory / "tokenizer.json").is_file() or (directory / "tokenizer.model").is_file())
