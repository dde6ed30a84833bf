"""Logits of an hf-awq checkpoint computed by AutoAWQ's own GEMM modules (run by test_awq_interop.py).

    python awq_reference_logits.py CHECKPOINT_DIR IDS_JSON OUT_FILE

Every linear that has a ``qweight`` becomes AutoAWQ's ``WQLinear_GEMM`` (its kernels where built, else its own
torch unpacking); the rest of the model is transformers' float32 model. Runs in an environment with autoawq.
"""

import json
import sys
from pathlib import Path

import torch
from awq.modules.linear.gemm import WQLinear_GEMM
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM


def main(checkpoint: str, ids_json: str, out_file: str) -> None:
    path = Path(checkpoint)
    config_dict = json.loads((path / "config.json").read_text())
    qcfg = config_dict.pop("quantization_config")
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config_dict), dtype=torch.float32).eval()
    state = {}
    for f in sorted(path.glob("*.safetensors")):
        state.update(load_file(str(f)))
    for name in sorted(k[: -len(".qweight")] for k in state if k.endswith(".qweight")):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        linear = getattr(parent, child)
        setattr(parent, child, WQLinear_GEMM(qcfg["bits"], qcfg["group_size"], linear.in_features,
                                             linear.out_features, linear.bias is not None, "cpu"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if [m for m in missing if m != "lm_head.weight"] or unexpected:
        raise SystemExit(f"checkpoint does not fit: missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.tie_weights()
    with torch.no_grad():
        logits = model(torch.tensor(json.loads(ids_json))).logits.float()
    torch.save(logits, out_file)


if __name__ == "__main__":
    main(*sys.argv[1:4])
