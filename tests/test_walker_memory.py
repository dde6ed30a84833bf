"""Peak memory as a measured contract (issue 13): every method streamed by the layer walker (RTN, GPTQ, AWQ)
holds one decoder layer and its solver's working set, not the model.

Each quantization runs in a fresh subprocess that reports its peak RSS (VmHWM: its own, not its parent's, see
``teeny_core.modeling.peak_rss_bytes``). The 4- and 8-layer models have
layers of 19 MiB in bf16 (38 MiB once cast to float32 for the solver), so a whole-model load would add
150 MiB between them. The interpreter's own peak is measured by the same quantizer on a 1-layer model of
width 128, so the imports a quantization makes (torch, transformers, the solver's modules) are counted there.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

H, I = 768, 3072  # hidden and intermediate width of the test models
LAYER_FP32 = (4 * H * H + 3 * H * I) * 4
SAMPLES, SEQ = 4, 64
ACTIVATIONS = SAMPLES * SEQ * H * 4  # one layer's inputs (float32)
MiB = 2**20

# What each solver may hold beyond the layer's own buffers, the activations and the interpreter:
WORKING_SET = {
    # nothing: one weight's codes and its dequantized copy are part of the layer term (measured: 145 MiB in all
    # above the interpreter)
    "rtn": 0,
    # the widest linear's Hessian and the copies its factorization makes (8 x in^2 floats), and W, Q, errors and
    # w_hat (4 x out x in floats) (measured: 354 MiB in all)
    "gptq": 8 * I * I * 4 + 4 * H * I * 4,
    # the clipping search's blocks (at most 2**24 floats each: the reference, the candidate and its error) and a
    # group's weights while a grid point is tried (the originals, the scaled and fake-quantized copy)
    # (measured: 192 MiB in all)
    "awq": 3 * 2**24 * 4 + 3 * (3 * H * I) * 4,
}
OPTIONS = {
    "rtn": {"bits": 4, "group_size": 128},
    "gptq": {"bits": 4, "group_size": 128, "device": "cpu"},
    "awq": {"bits": 4, "group_size": 128, "device": "cpu"},
}

CHILD = r"""
import json, sys
import torch
from teeny_core.modeling import ModelSource, peak_rss_bytes
from teeny_core.plugins import Plugins
from teeny_core.types import CalibrationSet
method, path, out, options = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
cls = Plugins.load().get("quantizer", method)
ids = torch.randint(3, 500, (%d, %d), generator=torch.Generator().manual_seed(0)).tolist()
options = cls.Options.from_mapping(options)
calibration = CalibrationSet("ids", ids) if cls.needs_calibration(options) else None
cls().quantize(ModelSource(path), calibration, options, out)
print(json.dumps({"peak": peak_rss_bytes()}))
""" % (SAMPLES, SEQ)


def build(path, layers, tokenizer, hidden=H, intermediate=I):
    import transformers

    config = transformers.LlamaConfig(vocab_size=len(tokenizer), num_hidden_layers=layers, hidden_size=hidden,
                                      intermediate_size=intermediate, num_attention_heads=8, num_key_value_heads=8,
                                      max_position_embeddings=256, tie_word_embeddings=False,
                                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                      pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def peak(method, path, out, options):
    run = subprocess.run([sys.executable, "-c", CHILD, method, str(path), str(out), json.dumps(options)],
                         capture_output=True, text=True, env={**os.environ, "TEENY_NO_BAR": "1"}, timeout=1800)
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout.strip().splitlines()[-1])["peak"]


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp("walker-memory")
    return {"small": build(root / "m1", 1, tiny_tokenizer, hidden=128, intermediate=256),
            4: build(root / "m4", 4, tiny_tokenizer), 8: build(root / "m8", 8, tiny_tokenizer)}


@pytest.mark.slow
@pytest.mark.parametrize("method", ["rtn", "gptq", "awq"])
def test_peak_rss_is_one_layer_plus_solver_and_flat_in_the_number_of_layers(method, models, tmp_path):
    options = OPTIONS[method]
    interpreter = peak(method, models["small"], tmp_path / "q1", options)
    p4 = peak(method, models[4], tmp_path / "q4", options)
    p8 = peak(method, models[8], tmp_path / "q8", options)
    report = (f"{method}: interpreter {interpreter / MiB:.0f} MiB, 4 layers {p4 / MiB:.0f} MiB, "
              f"8 layers {p8 / MiB:.0f} MiB, layer {LAYER_FP32 / MiB:.0f} MiB, "
              f"solver working set {WORKING_SET[method] / MiB:.0f} MiB")
    # flat: four more layers (4 x 38 MiB as float32; a whole-model load would add all of them) add less than one
    assert p8 - p4 < LAYER_FP32, report
    # bounded: the interpreter; the layer's buffers (its float32 copy, the bf16 source tensors it was read from,
    # its output tensors pending for the shard and their serialized copy, and glibc's slack: 5 x the float32
    # layer, measured 4); the solver's working set; the activations (inputs, outputs, one batch in flight)
    assert p8 < interpreter + 5 * LAYER_FP32 + WORKING_SET[method] + 3 * ACTIVATIONS, report
