"""The component interfaces plugins implement, and the small data types that flow between them.

Nothing here imports torch, nor any behaviour: components import heavy libraries inside their methods. The
model handles they pass around, :class:`~teeny_core.modeling.ModelSource` and
:class:`~teeny_core.modeling.Artifact`, live with the code that resolves and loads them, in
:mod:`teeny_core.modeling` (``from teeny_core import ModelSource, Artifact``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Iterator, TypeVar

from teeny_core.options import NoOptions, Options

if TYPE_CHECKING:
    from teeny_core.modeling import Artifact, ModelSource

OptionsT = TypeVar("OptionsT", bound=Options)
"""A component's own Options class: ``class RTNQuantizer(Quantizer[RTNOptions])`` gets ``RTNOptions`` instances."""

class Component(ABC, Generic[OptionsT]):
    """Base of every component: a registered name, a one-line summary (the docstring) and an Options class.

    Generic over that class: the pipeline parses a component's options once, into ``Options``, and passes that
    instance to every method, so ``class GPTQQuantizer(Quantizer[GPTQOptions])`` declares ``options: GPTQOptions``
    and needs no ``isinstance`` check."""

    name: ClassVar[str]
    Options: ClassVar[type[Options]] = NoOptions

    @classmethod
    def summary(cls) -> str:
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""

    @classmethod
    def available(cls) -> str | None:
        """Why this component cannot run on this machine (one line), or None when it can.

        Checked when listing and choosing components, so keep it cheap: no heavy imports.
        """
        return None


@dataclasses.dataclass
class CalibrationSet:
    """Token-id sequences for calibration, deterministic for (calibrator, options, tokenizer, seed)."""

    name: str
    samples: list[list[int]]
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    def fingerprint(self) -> str:
        h = hashlib.sha256(self.name.encode())
        for s in self.samples:
            h.update(json.dumps(s).encode())
        return h.hexdigest()[:16]

    def tensor(self):
        """The samples as one ``LongTensor`` [n, seq_len] (all samples share one length)."""
        import torch

        return torch.tensor(self.samples, dtype=torch.long)


@dataclasses.dataclass
class Generation:
    """One completion: its text, token count, why it stopped and timings in seconds."""

    text: str
    tokens: int
    finish_reason: str  # "stop" (stop string or EOS) or "length"
    seconds: float = 0.0
    first_token_seconds: float | None = None


class LoadedModel(ABC):
    """A model loaded by a runtime, ready to generate and score."""

    @property
    @abstractmethod
    def tokenizer(self) -> Any:
        """An HF-style tokenizer (``encode``/``decode``/``apply_chat_template``)."""

    @abstractmethod
    def generate(self, prompts: list[str], *, max_new_tokens: int = 256, temperature: float = 0.0,
                 top_p: float = 1.0, stop: list[str] | None = None, seed: int = 0) -> list[Generation]:
        """Complete each prompt (greedy when temperature is 0); the text excludes the prompt and the stop string."""

    @abstractmethod
    def logprobs(self, token_ids: list[list[int]]):
        """Log-softmax over the vocabulary for each position: a float32 torch tensor [batch, seq, vocab].

        Position t holds the distribution of token t+1 given tokens 0..t. Sequences in one call share a length.
        """

    def close(self) -> None:
        """Release memory; the default does nothing."""

    def weight_bytes(self) -> int | None:
        """Bytes of parameters and buffers as this runtime holds them (packed bytes for packed kernels);
        None when the runtime cannot tell."""
        return None


class Quantizer(Component[OptionsT]):
    """Turns a model source into an :class:`Artifact` in ``out_dir``."""

    @abstractmethod
    def quantize(self, source: ModelSource, calibration: CalibrationSet | None, options: OptionsT,
                 out_dir: Path) -> Artifact:
        """Write the quantized model and its manifest (:meth:`Artifact.save`) into ``out_dir`` (an empty
        directory) and return the :class:`Artifact`."""

    def describe(self, options: OptionsT) -> dict[str, Any]:
        """Short facts for reports (e.g. ``{"bits": 4, "group_size": 128}``); default: the options."""
        return options.to_dict()

    @classmethod
    def needs_calibration(cls, options: OptionsT) -> bool:
        """Whether quantizing with these options uses a calibration set (default: no). A variant that needs none
        gets none (``calibration`` is None) and its key does not depend on the calibration settings."""
        return False


class Calibrator(Component[OptionsT]):
    """Produces calibration token windows for a tokenizer."""

    @abstractmethod
    def samples(self, tokenizer: Any, options: OptionsT, seed: int) -> CalibrationSet:
        """Return a deterministic calibration set for this seed."""


class Runtime(Component[OptionsT]):
    """Loads artifacts of the formats it lists."""

    formats: ClassVar[tuple[str, ...]] = ()
    # (format, device) -> priority, higher first; "*" matches any device. A format in ``formats`` that is not
    # listed here gets priority 0: the runtime loads it, but not natively (e.g. it dequantizes on load).
    native: ClassVar[dict[tuple[str, str], int]] = {}

    @classmethod
    def priority(cls, fmt: str, device: str) -> int | None:
        """How well this runtime executes ``fmt`` on ``device`` ("cpu", "cuda"): higher is faster, 0 loads it
        without executing it natively, None cannot load it."""
        if fmt not in cls.formats:
            return None
        return cls.native.get((fmt, device.split(":")[0]), cls.native.get((fmt, "*"), 0))

    @abstractmethod
    def load(self, artifact: Artifact, options: OptionsT) -> LoadedModel:
        """Load the artifact for generation and scoring."""

    @classmethod
    def import_libraries(cls) -> None:
        """Import the heavy libraries ``load`` uses, so the worker's baseline memory (taken right before ``load``)
        includes them and the load's own figures are the model's; the default imports nothing."""


class EvalContext(ABC):
    """What an evaluator gets from the pipeline: resumable record output, a cache and the reference model."""

    seed: int
    limit: int | None
    cache_dir: Path

    @abstractmethod
    def done(self) -> set[str]:
        """Keys (``record["key"]``) of records already written for this evaluator; skip them."""

    @abstractmethod
    def write(self, record: dict[str, Any]) -> None:
        """Append one finished record durably; it must carry a unique ``key``."""

    @abstractmethod
    def reference(self) -> LoadedModel | None:
        """The baseline model, loaded on first call (None when evaluating the baseline itself)."""

    @abstractmethod
    def reference_id(self) -> str:
        """A string identifying the baseline model (for cache keys)."""

    @abstractmethod
    def progress(self, total: int, description: str) -> "contextlib.AbstractContextManager[Any]":
        """A progress bar; ``advance(n)`` on the returned object."""


@dataclasses.dataclass(frozen=True)
class Metric:
    """What an evaluator's metric means: its label, which direction is better, and the per-item record field
    that analyzers compare for it (e.g. ``passed`` for pass@1, ``nll`` for perplexity), if any."""

    label: str
    higher_is_better: bool
    item_field: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Evaluator(Component[OptionsT]):
    """Measures a loaded model: writes one record per finished item, then summarizes all records."""

    metrics: ClassVar[dict[str, Metric]] = {}  # metric name (a key of summarize()'s dict) -> its meaning
    headline: ClassVar[str | None] = None  # the metric the report leads with and `teeny recommend` ranks by

    @classmethod
    def declaration(cls) -> dict[str, Any]:
        """The metric declarations as JSON data (stored in results.json, so reports need no plugins)."""
        return {"headline": cls.headline, "metrics": {k: m.to_dict() for k, m in cls.metrics.items()}}

    #: What the records mean beyond the options (e.g. how text windows are built); records written under
    #: another value are not reused, so changing it re-measures instead of mixing.
    records_version: ClassVar[str] = ""

    @abstractmethod
    def evaluate(self, model: LoadedModel, options: OptionsT, ctx: EvalContext) -> None:
        """Evaluate items not in ``ctx.done()``, calling ``ctx.write(record)`` as each finishes."""

    @abstractmethod
    def summarize(self, records: list[dict[str, Any]], options: OptionsT) -> dict[str, Any]:
        """Metrics (name -> number) from all records of this evaluator."""


class HardwareProfiler(Component[OptionsT]):
    """Measures resources around a stage ("load", "evaluate:<name>") and, optionally, a standard benchmark."""

    @abstractmethod
    @contextlib.contextmanager
    def measure(self, stage: str, options: OptionsT) -> Iterator[dict[str, Any]]:
        """Yield a dict the profiler fills with measurements when the stage ends."""

    def benchmark(self, model: LoadedModel, artifact: Artifact, options: OptionsT) -> dict[str, Any]:
        """Active measurements (e.g. time to first token, decode tokens/s); default none."""
        return {}


@dataclasses.dataclass
class VariantResult:
    """Everything stored for one variant, as analyzers and reports see it."""

    name: str
    method: str
    describe: dict[str, Any]
    records: dict[str, list[dict[str, Any]]]  # evaluator -> records
    metrics: dict[str, dict[str, Any]]  # evaluator -> metrics
    profile: dict[str, Any]
    artifact_bytes: int | None = None


class Analyzer(Component[OptionsT]):
    """Compares every variant with the baseline, item by item."""

    @abstractmethod
    def analyze(self, baseline: VariantResult, variants: list[VariantResult], options: OptionsT) -> dict[str, Any]:
        """Findings keyed by variant name (and anything experiment-wide)."""
