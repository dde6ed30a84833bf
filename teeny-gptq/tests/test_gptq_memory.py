"""Peak memory as a measured contract: streamed GPTQ holds one decoder layer, not the model.

Each quantization runs in a fresh subprocess that reports its peak RSS. The 4- and 8-layer models have
layers of 19 MiB in bf16 (38 MiB once cast to float32 for the solver), so a whole-model load would add
150 MiB between them."""

import json
import subprocess
import sys

import pytest
import torch

LAYER_SHAPE = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=8, num_key_value_heads=8)

CHILD = r"""
import json, resource, sys
import torch
from teeny_core.types import CalibrationSet, ModelSource
path, out, mode = sys.argv[1:4]
if mode == "baseline":  # the interpreter with everything a quantization imports, and the tokenizer
    import transformers, teeny_core.walker, teeny_gptq.quantizer, teeny_gptq.gptq
    transformers.AutoConfig.from_pretrained(path); ModelSource(path).load_tokenizer()
    x = torch.randn(64, 64) @ torch.randn(64, 64)
else:
    from teeny_gptq.quantizer import GPTQOptions, quantize_native
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 500, (4, 64), generator=g).tolist()
    quantize_native(ModelSource(path), CalibrationSet("ids", ids),
                    GPTQOptions.from_mapping({"group_size": 128, "device": "cpu"}), out)
print(json.dumps({"peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def build(path, layers, tokenizer):
    import transformers

    config = transformers.LlamaConfig(vocab_size=len(tokenizer), num_hidden_layers=layers, **LAYER_SHAPE,
                                      max_position_embeddings=256, tie_word_embeddings=False,
                                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                      pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def peak(path, out, mode):
    run = subprocess.run([sys.executable, "-c", CHILD, str(path), str(out), mode], capture_output=True, text=True,
                         env={**__import__("os").environ, "TEENY_NO_BAR": "1"}, timeout=1800)
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout.strip().splitlines()[-1])["peak"]


@pytest.mark.slow
def test_peak_rss_is_one_layer_plus_activations_and_flat_in_the_number_of_layers(tmp_path, tiny_tokenizer):
    h, i = LAYER_SHAPE["hidden_size"], LAYER_SHAPE["intermediate_size"]
    layer_fp32 = (4 * h * h + 3 * h * i) * 4
    activations = 4 * 64 * h * 4
    four = build(tmp_path / "m4", 4, tiny_tokenizer)
    eight = build(tmp_path / "m8", 8, tiny_tokenizer)
    interpreter = peak(four, tmp_path / "none", "baseline")
    p4 = peak(four, tmp_path / "q4", "quantize")
    p8 = peak(eight, tmp_path / "q8", "quantize")
    MiB = 2**20
    report = f"interpreter {interpreter / MiB:.0f} MiB, 4 layers {p4 / MiB:.0f} MiB, 8 layers {p8 / MiB:.0f} MiB, " \
             f"layer {layer_fp32 / MiB:.0f} MiB"
    # flat: four more layers (4 x 38 MiB as float32; a whole-model load would add all of them) add less than one
    assert p8 - p4 < layer_fp32, report
    # bounded: the interpreter; the layer twice (its float32 copy and the bf16 source tensors it was read from,
    # plus the dequantized weights written back); GPTQ's working set for the widest linear (the Hessian, its
    # damped copy, Cholesky factor and inverse: 4 x in^2 floats, and W, Q, errors, w_hat: 4 x out x in floats);
    # the activations (inputs, outputs and one batch in flight)
    working_set = 4 * i * i * 4 + 4 * h * i * 4
    assert p8 < interpreter + 2 * layer_fp32 + working_set + 3 * activations, report
