"""Teeny: quantize language models and prove what they kept. This is the plugin core.

The public plugin API is importable from here (``from teeny_core import Quantizer, Options, option``); each
name is imported on first use, so ``import teeny_core`` stays light (no torch, no transformers).
"""

from __future__ import annotations

import importlib

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("teeny")
"""Decorate plugin hook implementations with ``@teeny_core.hookimpl``."""

# name -> the module that defines it. Only these names are the plugin API; everything else is internal.
_PUBLIC = {
    "TeenyError": "teeny_core.errors",
    "BadFileError": "teeny_core.errors",
    "Options": "teeny_core.options",
    "option": "teeny_core.options",
    "OptionsError": "teeny_core.options",
    "parse_cli_options": "teeny_core.options",
    "Component": "teeny_core.types",
    "ModelSource": "teeny_core.modeling",
    "Artifact": "teeny_core.modeling",
    "CalibrationSet": "teeny_core.types",
    "Generation": "teeny_core.types",
    "LoadedModel": "teeny_core.types",
    "Quantizer": "teeny_core.types",
    "Calibrator": "teeny_core.types",
    "Runtime": "teeny_core.types",
    "EvalContext": "teeny_core.types",
    "Metric": "teeny_core.types",
    "Evaluator": "teeny_core.types",
    "HardwareProfiler": "teeny_core.types",
    "VariantResult": "teeny_core.types",
    "Analyzer": "teeny_core.types",
    "ARTIFACT_MANIFEST": "teeny_core.modeling",
    "Executor": "teeny_core.executor",
    "VariantTask": "teeny_core.executor",
    "Outcome": "teeny_core.executor",
    "ReportSection": "teeny_core.report",
    "Block": "teeny_core.report",
    "Emit": "teeny_core.executor",
    "run_variant_task": "teeny_core.worker",
    "describe_exit": "teeny_core.worker",
    # helpers quantizer plugins share
    "skipped": "teeny_core.quant",
    "lm_head_outside": "teeny_core.quant",
    "stored_dtype": "teeny_core.walker",
    "safetensors_files": "teeny_core.formats.gptq",
    "write_checkpoint_config": "teeny_core.formats.checkpoint",
    "read_jsonl": "teeny_core.store",
}

__all__ = ["hookimpl", "__version__", *_PUBLIC]


def __getattr__(name: str):
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'teeny_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
