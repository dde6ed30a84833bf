"""The walker hook RTN, AWQ and GPTQ share to round ``lm_head``: an untied lm_head is replaced by its rounded
tensors; a tied one is rounded from the embedding, which is written unchanged beside it, and a stray
``lm_head.weight`` a tied checkpoint also stores is dropped so the checkpoint holds one lm_head."""

import torch

from teeny_core import lm_head_outside
from teeny_core.arch import spec_for

SPEC = spec_for("llama")


def _round(weight):
    assert weight.dtype == torch.float32
    return {"lm_head.qweight": torch.round(weight * 2).to(torch.int8), "lm_head.scales": torch.full((1,), 0.5)}


def test_an_untied_lm_head_is_replaced_by_its_rounded_tensors_and_nothing_else_is_touched():
    outside = lm_head_outside(SPEC, {"tie_word_embeddings": False}, _round, torch.bfloat16)
    head = torch.tensor([[0.26, -1.0]], dtype=torch.bfloat16)
    written = outside("lm_head.weight", head)
    assert set(written) == {"lm_head.qweight", "lm_head.scales"}
    assert written["lm_head.qweight"].tolist() == [[1, -2]]
    assert outside("model.embed_tokens.weight", head) is None and outside("model.norm.weight", head) is None


def test_a_tied_lm_head_is_rounded_from_the_kept_embedding_and_a_stray_copy_is_dropped():
    outside = lm_head_outside(SPEC, {"tie_word_embeddings": True}, _round, torch.float16)
    embed = torch.tensor([[0.74, 2.0]], dtype=torch.float32)
    before = embed.clone()
    written = outside("model.embed_tokens.weight", embed)
    assert set(written) == {"model.embed_tokens.weight", "lm_head.qweight", "lm_head.scales"}
    assert written["model.embed_tokens.weight"].dtype == torch.float16
    assert torch.equal(written["model.embed_tokens.weight"].float(), embed.half().float())
    assert written["lm_head.qweight"].tolist() == [[1, 4]] and torch.equal(embed, before)  # not in place
    assert outside("lm_head.weight", embed) == {} and outside("model.norm.weight", embed) is None
