"""A pytest plugin for Teeny plugin authors: tiny real-architecture models and contract test classes.

Installed with teeny-core (entry point ``pytest11``). Fixtures:

- ``tiny_model(arch="llama"|"qwen2"|"gemma3")`` -> path of a saved HF model (random weights, 2 layers,
  a byte-level BPE tokenizer trained in the test, no download). Built once per session per architecture.
- ``tiny_tokenizer`` -> that tokenizer.
- ``read_only(path)`` makes a directory unwritable for this process, root included (a read-only bind mount as
  root, ``chmod 0555`` otherwise), until the test ends.

:func:`build_quantized_checkpoint` writes an hf-gptq or hf-awq checkpoint of such a model.

Contracts: subclass :class:`QuantizerContract` (set ``method`` and ``options``), :class:`EvaluatorContract`,
:class:`CalibratorContract` or :class:`RuntimeContract` in your plugin's tests to get the checks every
component of that kind must pass.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest

ARCHITECTURES = ("llama", "qwen2", "gemma3", "mistral", "phi3", "qwen2_moe")
_SPECIAL = "<|endoftext|>"
_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def tiny_corpus() -> list[str]:
    """Deterministic text the tiny tokenizer is trained on (a few standard-library modules): calibration
    text that tokenizes well with it."""
    import inspect
    import json as json_mod
    import textwrap

    texts = [inspect.getsource(mod) for mod in (json_mod.decoder, json_mod.encoder, textwrap)]
    texts.append("The quick brown fox jumps over the lazy dog. def add(a, b):\n    return a + b\n")
    return texts


def corpus_windows(tokenizer, count: int, length: int) -> list[list[int]]:
    """``count`` consecutive windows of ``length`` token ids of :func:`tiny_corpus` (calibration that
    tokenizes well with the tiny tokenizer)."""
    ids = tokenizer.encode("".join(tiny_corpus()))[: count * length]
    return [ids[i:i + length] for i in range(0, len(ids), length)]


def build_tokenizer(vocab_size: int = 512):
    """A byte-level BPE tokenizer (GPT-2 style) trained on :func:`tiny_corpus`; deterministic."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[_SPECIAL], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(tiny_corpus(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=_SPECIAL, eos_token=_SPECIAL,
                                   pad_token=_SPECIAL, unk_token=None)
    fast.chat_template = _CHAT_TEMPLATE
    return fast


def add_bos(tokenizer):
    """A copy of ``tokenizer`` that starts every document with its own ``<bos>`` token, as Gemma's and Llama's
    tokenizers do (``tokenizer(text)`` prepends it; ``add_special_tokens=False`` does not)."""
    import copy

    from tokenizers import processors

    tok = copy.deepcopy(tokenizer)
    tok.add_special_tokens({"bos_token": "<bos>"})
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", tok.bos_token_id)])
    return tok


def build_tiny_model(arch: str, out_dir: Path, *, hidden: int = 128, layers: int = 2, seed: int = 0,
                     tokenizer=None) -> Path:
    """Save a randomly initialised ``arch`` causal LM with the tiny tokenizer into ``out_dir``."""
    import torch
    import transformers

    if arch not in ARCHITECTURES:
        raise ValueError(f"arch {arch!r} is not one of {ARCHITECTURES}")
    tokenizer = tokenizer or build_tokenizer()
    common: dict[str, Any] = dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                                  num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                                  max_position_embeddings=512, bos_token_id=tokenizer.bos_token_id,
                                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    if arch == "llama":
        config = transformers.LlamaConfig(**common, tie_word_embeddings=False)
        cls = transformers.LlamaForCausalLM
    elif arch == "qwen2":
        config = transformers.Qwen2Config(**common, tie_word_embeddings=True)
        cls = transformers.Qwen2ForCausalLM
    elif arch == "mistral":
        config = transformers.MistralConfig(**common, sliding_window=16, tie_word_embeddings=False)
        cls = transformers.MistralForCausalLM
    elif arch == "phi3":
        config = transformers.Phi3Config(**common, tie_word_embeddings=False)
        cls = transformers.Phi3ForCausalLM
    elif arch == "qwen2_moe":
        config = transformers.Qwen2MoeConfig(**common, num_experts=4, num_experts_per_tok=2,
                                             moe_intermediate_size=hidden // 2,
                                             shared_expert_intermediate_size=hidden, tie_word_embeddings=False)
        cls = transformers.Qwen2MoeForCausalLM
    else:
        config = transformers.Gemma3TextConfig(**common, head_dim=hidden // 4, sliding_window=64,
                                               query_pre_attn_scalar=hidden // 4)
        cls = transformers.Gemma3ForCausalLM
    torch.manual_seed(seed)
    model = cls(config).eval()
    with torch.no_grad():  # break the symmetry of freshly initialised norms so folding bugs show
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def _quantized_codes(weight, bits: int, group: int, sym: bool, perm):
    """RTN codes of ``weight`` whose groups are the column runs of ``perm`` (act-order when perm is shuffled)."""
    import torch

    from teeny_core.quant import quantize_weight

    q_perm, scale, zero = quantize_weight(weight[:, perm], bits, "sym" if sym else "asym", "group", group)
    q = torch.empty_like(q_perm)
    q[:, perm] = q_perm
    g_idx = torch.empty(weight.shape[1], dtype=torch.int32)
    g_idx[perm] = (torch.arange(weight.shape[1]) // group).int()
    return q, scale.half().float(), zero.clamp(min=1), g_idx


def build_quantized_checkpoint(src, out, kind: str, bits: int = 4, group: int = 32, sym: bool = False,
                               act_order: bool = False, g_idx_override=None, dynamic: dict | None = None):
    """Write an hf-gptq (``kind="gptq"``) or hf-awq checkpoint of every linear but lm_head of the model at ``src``
    into ``out``, with RTN codes; ``act_order`` shuffles each layer's groups over its columns (GPTQ ``g_idx``),
    ``g_idx_override`` replaces ``g_idx`` where the widths match; GPTQModel ``dynamic`` rules (gptq only) give
    modules their own ``bits``/``group_size`` or keep them float. Returns the saved Artifact."""
    import torch

    from teeny_core.formats import awq, gptq
    from teeny_core.formats.checkpoint import write_checkpoint
    from teeny_core.modeling import Artifact, ModelSource, linear_layers

    model, tokenizer = ModelSource(str(src)).load(dtype="float32")
    gen = torch.Generator().manual_seed(0)
    packed = {}
    for name, linear in linear_layers(model).items():
        if name == "lm_head":
            continue
        rule = gptq.dynamic_rule(dynamic, name)
        if rule is None:
            continue
        w = linear.weight.detach()
        perm = torch.randperm(w.shape[1], generator=gen) if act_order else torch.arange(w.shape[1])
        module_bits, module_group = rule.get("bits", bits), rule.get("group_size", group)
        q, scale, zero, g_idx = _quantized_codes(w, module_bits, module_group, sym, perm)
        if kind == "gptq":
            if g_idx_override is not None and len(g_idx_override) == len(g_idx):
                g_idx = g_idx_override.clone()
            packed[name] = gptq.pack_linear(q, scale, zero, g_idx, module_bits)
        else:
            packed[name] = {"qweight": awq.pack_awq(q), "qzeros": awq.pack_zeros(zero),
                            "scales": awq.pack_scales(scale)}
    config = ({"quant_method": "gptq", "bits": bits, "group_size": group, "desc_act": act_order, "sym": sym,
               "checkpoint_format": "gptq", **({"dynamic": dynamic} if dynamic else {})} if kind == "gptq" else
              {"quant_method": "awq", "bits": 4, "group_size": group, "version": "gemm", "zero_point": True})
    out.mkdir()
    write_checkpoint(model, tokenizer, packed, out, config, "float16")
    artifact = Artifact(f"hf-{kind}", out, {})
    artifact.save()
    return artifact


def assert_runs_packed(artifact, packed_layers: int, tolerance: float = 1e-4) -> None:
    """The transformers runtime runs ``packed_layers`` linears of ``artifact`` packed (none left float), and its
    log-probs match the same checkpoint loaded dequantized within ``tolerance``."""
    from teeny_core.builtin.transformers_runtime import TransformersRuntime

    options = TransformersRuntime.Options.from_mapping
    packed = TransformersRuntime().load(artifact, options({"device": "cpu", "packed_compute": "float32"}))
    facts = packed.load_facts()
    assert facts["kernels"] == "packed" and facts["packed_layers"] == packed_layers and facts["float_layers"] == {}
    dequant = TransformersRuntime().load(artifact, options({"device": "cpu", "kernels": "dequant"}))
    ids = [[(7 * i + 3) % 500 + 1 for i in range(32)]]
    assert float((packed.logprobs(ids) - dequant.logprobs(ids)).abs().max()) <= tolerance


def checkpoint_bits_per_weight(artifact_dir) -> tuple[float, dict[str, int]]:
    """``(stored bits per quantized weight, {linear: bits})`` of an hf-gptq checkpoint, counted from its tensors'
    bytes (qweight, qzeros, scales, g_idx) and shapes, independently of the writer's own accounting."""
    from teeny_core.formats.checkpoint import read_safetensors
    from teeny_core.formats.gptq import safetensors_files

    tensors: dict[str, Any] = {}
    for f in safetensors_files(artifact_dir):
        tensors.update(read_safetensors(f))
    stored = weights = 0
    bits_of = {}
    for key in tensors:
        if not key.endswith(".qweight"):
            continue
        name = key[: -len(".qweight")]
        in_features, out_features = tensors[f"{name}.g_idx"].shape[0], tensors[key].shape[1]
        bits_of[name] = tensors[key].shape[0] * 32 // in_features
        weights += in_features * out_features
        stored += 8 * sum(tensors[f"{name}.{s}"].numel() * tensors[f"{name}.{s}"].element_size()
                          for s in ("qweight", "qzeros", "scales", "g_idx"))
    return stored / weights, bits_of


def header_dtypes(directory) -> dict[str, str]:
    """Tensor name -> safetensors dtype code (``F32``, ``BF16``, ``I32`` ...) of every shard in ``directory``, read
    from the shard headers alone: what an artifact stores, independently of any loader."""
    import struct

    out = {}
    for file in sorted(Path(directory).glob("*.safetensors")):
        with open(file, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
        header.pop("__metadata__", None)
        out.update({name: info["dtype"] for name, info in header.items()})
    return out


class _ChatTokenizer:
    """A chat template that is the messages' contents, one after the other."""

    chat_template = "{{ messages }}"

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        return "".join(m["content"] for m in messages)


def answering_model(answers: dict[str, str] | Callable[[str], str], chat: bool = False):
    """A :class:`~teeny_core.types.LoadedModel` whose completion of each prompt is ``answers[prompt]`` (or
    ``answers(prompt)``): an evaluator's grading path tested without a model. It cannot score; with ``chat``
    its tokenizer has a chat template (the messages' text), else none. Its ``calls`` list holds each
    ``generate()`` call's prompts and keyword arguments (``seed``, ``stop`` ...)."""
    from teeny_core.types import Generation, LoadedModel

    answer = answers if callable(answers) else answers.__getitem__

    class Answering(LoadedModel):
        def __init__(self) -> None:
            self.calls: list[tuple[list[str], dict[str, Any]]] = []

        @property
        def tokenizer(self):
            return _ChatTokenizer() if chat else type("Tok", (), {"chat_template": None})()

        def generate(self, prompts, **kwargs):
            self.calls.append((list(prompts), kwargs))
            return [Generation(text=answer(p), tokens=5, finish_reason="stop") for p in prompts]

        def logprobs(self, token_ids):
            raise NotImplementedError

    return Answering()


def experiment_toml(name: str, model: Any, output_dir: Any, *, chunks: int, chunk_len: int,
                    profile: bool = True, body: str = "") -> str:
    """An experiment file's text for a quick ``teeny run``: ``model`` on the CPU, results under ``output_dir``,
    the fidelity evaluator on ``chunks`` windows of ``chunk_len`` tokens, the system profiler without its
    active benchmark (no profiler table when not ``profile``), then ``body`` (variants and other tables)."""
    profiler = "[profilers.system]\nbenchmark = false\n" if profile else ""
    return (f'name = "{name}"\nmodel = "{model}"\noutput_dir = "{output_dir}"\ndevice = "cpu"\n'
            f"[evaluators.fidelity]\nchunks = {chunks}\nchunk_len = {chunk_len}\n{profiler}{body}")


def flipped(outcomes: list[bool], right_to_wrong: int, wrong_to_right: int) -> list[bool]:
    """Pass/fail ``outcomes`` with the first ``right_to_wrong`` passes failed and the first ``wrong_to_right``
    failures passed: a variant that lost and won known items, for analyzer tests."""
    out = list(outcomes)
    passed = [i for i, p in enumerate(outcomes) if p]
    failed = [i for i, p in enumerate(outcomes) if not p]
    for i in passed[:right_to_wrong]:
        out[i] = False
    for i in failed[:wrong_to_right]:
        out[i] = True
    return out


# --- fixtures -----------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, tiny_tokenizer) -> Callable[..., Path]:
    """Factory: ``tiny_model("qwen2")`` -> directory of a saved tiny model (cached per session)."""
    built: dict[str, Path] = {}

    def make(arch: str = "llama") -> Path:
        if arch not in built:
            built[arch] = build_tiny_model(arch, tmp_path_factory.mktemp(f"tiny-{arch}"), tokenizer=tiny_tokenizer)
        return built[arch]

    return make


@pytest.fixture
def read_only() -> Any:
    """``read_only(directory)``: nothing under ``directory`` can be written until the test ends. As root (whom
    ``chmod`` does not stop) it becomes a read-only bind mount of itself; fails if the mount is refused."""
    import os
    import subprocess

    undo: list[Callable[[], Any]] = []

    def make(directory: Path) -> Path:
        directory = Path(directory)
        if os.geteuid() != 0:
            mode = directory.stat().st_mode
            directory.chmod(0o555)
            undo.append(lambda: directory.chmod(mode))
            return directory
        for args in (["--bind", str(directory), str(directory)], ["-o", "remount,bind,ro", str(directory)]):
            done = subprocess.run(["mount", *args], capture_output=True, text=True)
            if done.returncode:
                pytest.fail(f"cannot make {directory} read-only as root: mount {' '.join(args)}: {done.stderr}")
            if args[0] == "--bind":
                undo.append(lambda: subprocess.run(["umount", str(directory)], check=True))
        return directory

    yield make
    for step in reversed(undo):
        step()


@pytest.fixture(scope="session")
def teeny_plugins():
    """All installed plugins, loaded once."""
    from teeny_core.plugins import Plugins

    return Plugins.load()


# --- contracts ----------------------------------------------------------------------------------

class QuantizerContract:
    """Checks every quantizer must pass. Set ``method`` (registered name) and ``options`` (a mapping)."""

    method: str = ""
    options: dict[str, Any] = {}
    arch: str = "llama"

    def _run(self, teeny_plugins, tiny_model, tmp_path):
        from teeny_core.modeling import ModelSource

        cls = teeny_plugins.get("quantizer", self.method)
        quantizer = cls()
        opts = cls.Options.from_mapping(self.options, where=self.method)
        source = ModelSource(str(tiny_model(self.arch)))
        calibration = None
        if cls.needs_calibration(opts):
            tok = source.load_tokenizer()
            calibration = teeny_plugins.get("calibrator", "random-tokens")().samples(
                tok, teeny_plugins.get("calibrator", "random-tokens").Options.from_mapping({"samples": 4, "seq_len": 32}), seed=0)
        out = tmp_path / "artifact"
        out.mkdir()
        return quantizer, opts, quantizer.quantize(source, calibration, opts, out)

    def test_artifact_is_saved_and_loadable(self, teeny_plugins, tiny_model, tmp_path):
        from teeny_core.modeling import Artifact

        _, _, artifact = self._run(teeny_plugins, tiny_model, tmp_path)
        reopened = Artifact.open(artifact.path)
        assert reopened.format == artifact.format
        assert artifact.size_bytes() > 0
        runtime_cls = teeny_plugins.runtime_for(artifact.format)
        model = runtime_cls().load(reopened, runtime_cls.Options())
        ids = model.tokenizer.encode("def add(a, b):\n    return a + b")[:16]
        lp = model.logprobs([ids])
        assert tuple(lp.shape[:2]) == (1, len(ids))
        assert bool(lp.isfinite().all())
        model.close()

    def test_unknown_option_is_a_one_line_error(self, teeny_plugins):
        from teeny_core.options import OptionsError

        cls = teeny_plugins.get("quantizer", self.method)
        with pytest.raises(OptionsError, match="unknown option 'no_such_option'"):
            cls.Options.from_mapping({"no_such_option": 1}, where=self.method)


class CalibratorContract:
    """Checks every calibrator must pass. Set ``method`` and ``options``."""

    method: str = ""
    options: dict[str, Any] = {}

    def _samples(self, teeny_plugins, tiny_tokenizer, seed):
        cls = teeny_plugins.get("calibrator", self.method)
        return cls().samples(tiny_tokenizer, cls.Options.from_mapping(self.options, where=self.method), seed=seed)

    def test_deterministic_for_a_seed(self, teeny_plugins, tiny_tokenizer):
        a = self._samples(teeny_plugins, tiny_tokenizer, 1)
        b = self._samples(teeny_plugins, tiny_tokenizer, 1)
        assert a.samples == b.samples and a.samples
        assert len({len(s) for s in a.samples}) == 1
        assert all(0 <= t < len(tiny_tokenizer) for s in a.samples for t in s)


class RuntimeContract:
    """Checks every runtime must pass. Provide an ``artifact`` fixture in the subclass."""

    runtime: str = ""

    def test_generate_respects_stop_and_length(self, teeny_plugins, artifact):
        cls = teeny_plugins.get("runtime", self.runtime)
        model = cls().load(artifact, cls.Options())
        [gen] = model.generate(["def add(a, b):"], max_new_tokens=8)
        assert gen.text and gen.tokens <= 8
        assert gen.finish_reason == "stop" or gen.tokens == 8  # "length" means every allowed token was spent
        # Greedy decoding is deterministic: asking to stop at a piece of that text must cut it just before it.
        stop = gen.text[len(gen.text) // 2]
        [cut] = model.generate(["def add(a, b):"], max_new_tokens=8, stop=[stop])
        assert cut.finish_reason == "stop" and cut.text == gen.text[:gen.text.index(stop)]
        model.close()


class EvaluatorContract:
    """Checks every evaluator must pass: resumable, one record per key. Set ``evaluator`` and ``options``;
    provide a ``loaded_model`` fixture in the subclass."""

    evaluator: str = ""
    options: dict[str, Any] = {}

    def test_records_are_unique_and_resumable(self, teeny_plugins, loaded_model, tmp_path):
        from teeny_core.store import MemoryContext

        cls = teeny_plugins.get("evaluator", self.evaluator)
        ev, opts = cls(), cls.Options.from_mapping(self.options, where=self.evaluator)
        ctx = MemoryContext(cache_dir=tmp_path)
        ev.evaluate(loaded_model, opts, ctx)
        keys = [r["key"] for r in ctx.records]
        assert keys and len(keys) == len(set(keys))
        ev.evaluate(loaded_model, opts, ctx)  # everything done: nothing new
        assert [r["key"] for r in ctx.records] == keys
        metrics = ev.summarize(ctx.records, opts)
        assert metrics and all(isinstance(k, str) for k in metrics)
        json.dumps(metrics)


class ProfilerContract:
    """Checks every hardware profiler must pass. Set ``profiler`` (registered name) and ``options``."""

    profiler: str = ""
    options: dict[str, Any] = {}

    def test_measure_fills_its_dict_with_json_numbers_when_the_stage_ends(self, teeny_plugins):
        cls = teeny_plugins.get("profiler", self.profiler)
        opts = cls.Options.from_mapping(self.options, where=self.profiler)
        with cls().measure("evaluate:contract", opts) as measured:
            assert isinstance(measured, dict)
            held = bytearray(8 << 20)  # some work for the stage to measure
        del held
        assert measured and all(isinstance(k, str) for k in measured)
        assert json.loads(json.dumps(measured, allow_nan=False)) == measured  # results.json is strict JSON


class AnalyzerContract:
    """Checks every analyzer must pass: findings for each variant under its name, as strict JSON, from the
    pass/fail records of a variant equal to the baseline and of one that lost items. Set ``analyzer`` and
    ``options``."""

    analyzer: str = ""
    options: dict[str, Any] = {}

    @staticmethod
    def _variant(name: str, passed: list[bool]):
        from teeny_core.types import VariantResult

        records = [{"key": f"P/{i}/0", "task_id": f"P/{i}", "sample": 0, "passed": p,
                    "category": "passed" if p else "wrong_answer"} for i, p in enumerate(passed)]
        return VariantResult(name=name, method="rtn", describe={}, records={"humaneval": records},
                             metrics={"humaneval": {"pass@1": sum(passed) / len(passed)}}, profile={})

    def test_findings_are_keyed_by_variant_and_strict_json(self, teeny_plugins):
        cls = teeny_plugins.get("analyzer", self.analyzer)
        opts = cls.Options.from_mapping(self.options, where=self.analyzer)
        outcomes = [i % 3 != 0 for i in range(60)]
        baseline = self._variant("original", outcomes)
        same, worse = self._variant("same", outcomes), self._variant("worse", flipped(outcomes, 30, 0))
        found = cls().analyze(baseline, [same, worse], opts)
        assert {"same", "worse"} <= set(found)
        assert json.loads(json.dumps(found, allow_nan=False)) == found  # results.json is strict JSON
        alone = cls().analyze(baseline, [], opts)  # a run with no variant yet
        assert isinstance(alone, dict) and not {"same", "worse"} & set(alone)


class ExecutorContract:
    """Checks every executor must pass: no tasks, no outcomes; one :class:`Outcome` per task in task order,
    a variant that fails returned as a failed outcome with a one-line error, never raised. Set ``executor``
    and ``options``."""

    executor: str = ""
    options: dict[str, Any] = {}

    def _run(self, teeny_plugins, tasks):
        cls = teeny_plugins.get("executor", self.executor)
        return cls().run(tasks, cls.Options.from_mapping(self.options, where=self.executor), lambda event: None)

    def test_no_tasks_no_outcomes(self, teeny_plugins):
        assert self._run(teeny_plugins, []) == []

    def test_failing_variants_are_outcomes_in_task_order(self, teeny_plugins, tmp_path):
        from teeny_core.executor import VariantTask

        names = ["b-variant", "a-variant"]  # not in sorted order: the outcomes follow the tasks
        tasks = [VariantTask(run_dir=str(tmp_path), experiment={"name": "contract"}, variant=n) for n in names]
        outcomes = self._run(teeny_plugins, tasks)
        assert [o.variant for o in outcomes] == names
        assert not any(o.ok for o in outcomes)
        assert all(o.error and "\n" not in o.error for o in outcomes), [o.error for o in outcomes]
