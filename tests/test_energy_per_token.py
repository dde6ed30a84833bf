"""Joules per generated token: the system profiler's decode benchmark reads the energy counters around the batch-1
generation and divides by the tokens it generated; the report shows the figure. A fake RAPL zone stands in for
the hardware counter (NVML is kept out), advanced by the fake model by a known amount per generated token."""

from __future__ import annotations

from pathlib import Path

import pytest

from teeny_core.builtin import system_profiler
from teeny_core.types import Generation

JOULES_PER_TOKEN = 0.25


class FakeTokenizer:
    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(range(len(text.split())))

    def decode(self, ids: list[int]) -> str:
        return " ".join("w" for _ in ids)


class EnergyCountingModel:
    """Generates ``max_new_tokens`` per prompt and advances a RAPL counter (µJ) by a fixed energy per token."""

    batch_size = 2
    tokenizer = FakeTokenizer()

    def __init__(self, counter: Path | None) -> None:
        self.counter = counter

    def generate(self, prompts: list[str], max_new_tokens: int = 256, **_) -> list[Generation]:
        if self.counter is not None:
            used = int(JOULES_PER_TOKEN * 1e6) * max_new_tokens * len(prompts)
            self.counter.write_text(f"{int(self.counter.read_text()) + used}\n")
        return [Generation(text="x", tokens=max_new_tokens, finish_reason="length", seconds=0.01) for _ in prompts]


class FakeArtifact:
    def size_bytes(self) -> int:
        return 1000


def run_benchmark(teeny_plugins, monkeypatch, root: Path, counter: Path | None) -> dict:
    monkeypatch.setattr(system_profiler, "RAPL_ROOT", root)
    monkeypatch.setattr(system_profiler, "_nvml_handles", lambda: "NVML not installed (pip install nvidia-ml-py)")
    cls = teeny_plugins.get("profiler", "system")
    return cls().benchmark(EnergyCountingModel(counter), FakeArtifact(), cls.Options.from_mapping({"new_tokens": 8}))


def test_joules_per_token_from_the_energy_counter(teeny_plugins, monkeypatch, tmp_path):
    zone = tmp_path / "intel-rapl:0"
    zone.mkdir()
    (zone / "energy_uj").write_text("1000\n")
    (zone / "max_energy_range_uj").write_text(f"{2**40}\n")
    out = run_benchmark(teeny_plugins, monkeypatch, tmp_path, zone / "energy_uj")
    assert out["joules_per_token"] == pytest.approx(JOULES_PER_TOKEN)
    assert out["joules_per_token_source"] == "rapl"
    assert out["decode_tokens"] == 7


def test_joules_per_token_unavailable_says_why(teeny_plugins, monkeypatch, tmp_path):
    out = run_benchmark(teeny_plugins, monkeypatch, tmp_path / "no-powercap", None)
    assert out["joules_per_token"] is None
    assert out["joules_per_token_source"] == ("unavailable: no RAPL zones; "
                                              "NVML not installed (pip install nvidia-ml-py)")


def test_the_report_shows_joules_per_token():
    from teeny_core.report import results_table

    variant = {"name": "w4", "method": "rtn", "describe": {}, "metrics": {},
               "profile": {"benchmark": {"joules_per_token": 0.4123, "decode_tokens_per_s": 20.0}}}
    unmeasured = {**variant, "name": "float", "profile": {"benchmark": {"joules_per_token": None}}}
    headers, rows = results_table({"experiment": "e", "variants": [variant, unmeasured]})
    column = headers.index("J/token")
    assert [row[column] for row in rows] == ["0.412", "-"]
