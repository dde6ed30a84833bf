"""`teeny recommend`'s policy on results without an analysis: the declared headline and its direction rank the
variants, the worker's measured memory decides what fits, failed variants are never recommended."""

import pytest

from teeny_core.errors import TeenyError
from teeny_core.recommend import recommend

MiB = 2**20


def variant(name, ppl, worker_rss=None, load_rss=None, status="ok", runtime="transformers"):
    profile = {"runtime": runtime, "load": {"peak_rss_bytes": load_rss or 10_000 * MiB, "weight_bytes": 100 * MiB}}
    if worker_rss is not None:
        profile["worker"] = {"baseline_rss_bytes": 300 * MiB, "peak_rss_bytes": worker_rss}
    out = {"name": name, "method": "rtn", "describe": {"bits": 4}, "status": status, "profile": profile,
           "metrics": {"fidelity": {"perplexity": ppl}} if status == "ok" else {}}
    if status == "failed":
        out.update(error="worker killed by SIGSEGV", failed_stage="load")
    return out


def results(*variants, higher_is_better=False):
    return {"experiment": "t", "baseline": "original", "variants": list(variants), "analysis": {},
            "evaluators": {"fidelity": {"headline": "perplexity", "metrics": {
                "perplexity": {"label": "perplexity", "higher_is_better": higher_is_better, "item_field": "nll"}}}}}


def test_the_declared_direction_ranks():
    r = results(variant("original", 10.0, 900 * MiB), variant("w8", 10.5, 600 * MiB), variant("w4", 12.0, 500 * MiB))
    best, why = recommend(r, "1GiB")
    assert best["name"] == "original"  # lower perplexity is better, as declared
    assert "fits 1.0 GiB with 900.0 MiB (worker peak RSS under transformers)" in why
    flipped = results(*r["variants"], higher_is_better=True)  # the same numbers read as "higher is better"
    assert recommend(flipped, "1GiB")[0]["name"] == "w4"


def test_the_worker_memory_decides_what_fits():
    # the load stage's RSS says 10000 MiB for each; the worker's own peak is what the variant needs
    r = results(variant("original", 10.0, 900 * MiB), variant("w4", 12.0, 500 * MiB))
    best, why = recommend(r, "700MiB")
    assert best["name"] == "w4" and "too large: original (900.0 MiB)" in why


def test_failed_variants_are_never_recommended():
    r = results(variant("original", 10.0, 900 * MiB), variant("w2", 0.0, status="failed"),
                variant("w4", 12.0, 500 * MiB))
    best, why = recommend(r, "1GiB")
    assert best["name"] == "original" and "not considered (failed): w2" in why
    only_failed = results(variant("original", 0.0, status="failed"))
    with pytest.raises(TeenyError, match="no finished variants"):
        recommend(only_failed, "1GiB")
