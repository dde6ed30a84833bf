"""A quantizer's cautions (artifact meta ``cautions``: a setup it warned weakens the variant) reach results.json
and the report: the variant's name is marked and the sentences follow the results table, so a reader comparing
methods sees which row was handicapped."""

from __future__ import annotations

FIDELITY = {"headline": "kl_mean", "metrics": {"kl_mean": {"label": "KL", "higher_is_better": False}}}
SHORT = "64 calibration tokens are fewer than the 256 inputs of model.layers.0.mlp.down_proj"


def _variant(name, kl, **extra):
    return {"name": name, "method": "gptq", "describe": {"bits": 4}, "status": "ok",
            "metrics": {"fidelity": {"kl_mean": kl}}, "artifact_bytes": 1000, "profile": {}, **extra}


def test_a_variant_with_cautions_is_marked_and_its_sentences_follow_the_table(tmp_path):
    from teeny_core.report import write_report
    from teeny_core.results import CAUTION_MARK

    results = {"experiment": "e", "baseline": "original", "evaluators": {"fidelity": FIDELITY},
               "variants": [_variant("original", 0.0), _variant("short", 0.2, cautions=[SHORT]),
                            _variant("fine", 0.1, cautions=[])]}
    write_report(tmp_path, results)
    text = (tmp_path / "report.md").read_text()
    assert f"short {CAUTION_MARK}" in text and f"fine {CAUTION_MARK}" not in text
    assert f"short: {SHORT}." in text and "fine:" not in text
    assert SHORT in (tmp_path / "report.html").read_text()


def test_no_cautions_no_note(tmp_path):
    from teeny_core.report import write_report
    from teeny_core.results import CAUTION_MARK

    results = {"experiment": "e", "baseline": "original", "evaluators": {"fidelity": FIDELITY},
               "variants": [_variant("original", 0.0), _variant("old", 0.2, cautions="not a list")]}
    write_report(tmp_path, results)
    assert CAUTION_MARK not in (tmp_path / "report.md").read_text()


def test_cautions_that_are_not_a_list_are_ignored_not_split_into_characters():
    """A third-party quantizer that writes ``meta["cautions"] = "text"`` gets no caution rather than one per letter
    (the run's results.json reads the artifact meta through the same function)."""
    from teeny_core.results import cautions_of

    assert cautions_of({"cautions": "too few tokens"}) == []
    assert cautions_of({"cautions": ["too few tokens", 3]}) == ["too few tokens", "3"]
    assert cautions_of({}) == []
