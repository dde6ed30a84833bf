"""``-o backend=gptqmodel``: run GPTQModel's GPTQ through the same plugin, for cross-checks and comparisons.

Needs the optional extra ``teeny-gptq[gptqmodel]`` (GPTQModel pins numpy/transformers, so install it in its own
environment). ``GPTQMODEL_CPU_WORKERS`` defaults to this machine's thread count.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from teeny_core.errors import TeenyError
from teeny_core.modeling import Artifact, ModelSource
from teeny_core.types import CalibrationSet


def import_gptqmodel():
    """The ``gptqmodel`` module, or a one-line error saying how to get it."""
    from teeny_core.modeling import num_threads

    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(num_threads()))
    try:
        import gptqmodel
    except ImportError as exc:
        raise TeenyError(f"backend=gptqmodel needs the gptqmodel package ({exc.msg}); install "
                         f"'teeny-gptq[gptqmodel]' in its own environment or use backend=native") from None
    return gptqmodel


def quantize_with_gptqmodel(source: ModelSource, calibration: CalibrationSet, options, out_dir: Path) -> Artifact:
    """Quantize with GPTQModel using the same options and calibration tokens; it writes the checkpoint."""
    from teeny_core.modeling import peak_rss_bytes

    gptqmodel = import_gptqmodel()
    if source.gguf_file:
        raise TeenyError("backend=gptqmodel cannot read GGUF models; give it an HF model directory")
    start = time.perf_counter()
    wanted = dict(bits=options.bits, group_size=options.group_size if options.group_size > 0 else -1,
                  sym=options.sym, desc_act=options.desc_act, static_groups=options.static_groups,
                  true_sequential=options.true_sequential, damp_percent=options.damp_percent,
                  damp_auto_increment=options.damp_auto_increment, mse=options.mse_norm if options.mse else 0.0)
    try:  # GPTQModel 7.6+ turns group-aware reordering on unless told otherwise (its QuantizeConfig is a factory,
        # so its fields cannot be inspected); native GPTQ does not reorder, so compare like with like
        config = gptqmodel.QuantizeConfig(**wanted, act_group_aware=False)
    except TypeError:  # a version without group-aware reordering
        try:
            config = gptqmodel.QuantizeConfig(**wanted)
        except TypeError as exc:
            raise TeenyError(f"backend=gptqmodel: this gptqmodel version rejects the GPTQ options ({exc})") from None
    if getattr(config, "act_group_aware", False):
        raise TeenyError("backend=gptqmodel: this gptqmodel version keeps group-aware reordering on; native GPTQ "
                         "does not reorder, so the two would not be comparable")
    device = None if options.device == "auto" else options.device
    model = gptqmodel.GPTQModel.load(source.path, config, device=device)
    data = [{"input_ids": ids, "attention_mask": [1] * len(ids)} for ids in calibration.samples]
    model.quantize(data, batch_size=options.batch_size)
    model.save(str(out_dir))
    meta: dict[str, Any] = {
        "method": "gptq", "backend": "gptqmodel", "gptqmodel_version": getattr(gptqmodel, "__version__", "?"),
        **options.to_dict(), "calibration": {"name": calibration.name, "fingerprint": calibration.fingerprint(),
                                             "samples": len(calibration.samples)},
        "seconds": round(time.perf_counter() - start, 2), "peak_rss_bytes": peak_rss_bytes(),
    }
    artifact = Artifact(format="hf-gptq", path=out_dir, meta=meta)
    artifact.save()
    return artifact
