"""Writing an ``hf-gptq`` checkpoint's files next to the walker's shards: config, quantize config, tokenizer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_checkpoint(config, tokenizer, out_dir: Path, quantization_config: dict[str, Any], store_dtype: str,
                     source_dir: Path) -> None:
    """Write config.json (with ``quantization_config``), quantize_config.json (read by AutoGPTQ/GPTQModel), the
    generation config and the tokenizer into ``out_dir``; the weights are already there."""
    from teeny_core.walker import copy_generation_config

    out_dir = Path(out_dir)
    config.save_pretrained(out_dir)
    cfg_path = out_dir / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["quantization_config"] = quantization_config
    cfg["dtype"] = store_dtype
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True))
    (out_dir / "quantize_config.json").write_text(json.dumps(quantization_config, indent=2, sort_keys=True))
    copy_generation_config(source_dir, out_dir)
    tokenizer.save_pretrained(out_dir)
