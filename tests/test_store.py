"""The run store survives crashes: torn JSONL lines are cut, JSON writes are atomic, staging never leaks."""

import json

import pytest

from teeny_core.store import SampleLog, StoreContext, read_json, staging_dir, write_json


def test_torn_last_line_is_cut_and_the_rest_kept(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_text('{"key": "a", "evaluator": "e"}\n{"key": "b", "evaluator": "e"}\n{"key": "c", "eva')
    log = SampleLog(path)
    assert [r["key"] for r in log.records] == ["a", "b"]
    log.append({"key": "c", "evaluator": "e"})
    assert [json.loads(x)["key"] for x in path.read_text().splitlines()] == ["a", "b", "c"]


def test_context_skips_done_keys_and_requires_a_key(tmp_path):
    log = SampleLog(tmp_path / "s.jsonl")
    ctx = StoreContext(log, "ev", seed=0, limit=None, cache_dir=tmp_path)
    ctx.write({"key": "x", "v": 1})
    ctx.write({"key": "x", "v": 2})  # a duplicate is ignored, never written twice
    assert ctx.done() == {"x"}
    assert [r["v"] for r in SampleLog(tmp_path / "s.jsonl").records] == [1]
    other = StoreContext(SampleLog(tmp_path / "s.jsonl"), "other", seed=0, limit=None, cache_dir=tmp_path)
    assert other.done() == set()  # keys are per evaluator
    with pytest.raises(ValueError, match="without 'key'"):
        ctx.write({"v": 3})


def test_write_json_is_atomic(tmp_path):
    target = tmp_path / "m.json"
    write_json(target, {"a": 1})
    assert read_json(target) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]
    assert read_json(tmp_path / "missing.json", {}) == {}


def test_staging_dir_only_publishes_on_success(tmp_path):
    final = tmp_path / "artifact"
    with pytest.raises(RuntimeError):
        with staging_dir(final) as tmp:
            (tmp / "half.bin").write_bytes(b"x")
            raise RuntimeError("crash while quantizing")
    assert not final.exists() and not list(tmp_path.iterdir())
    (tmp_path / ".staging-artifact-leftover").mkdir()  # what a kill -9 leaves behind
    with staging_dir(final) as tmp:
        (tmp / "done.bin").write_bytes(b"y")
    assert [p.name for p in tmp_path.iterdir()] == ["artifact"]
    assert (final / "done.bin").read_bytes() == b"y"


def test_files_and_artifact_dirs_follow_the_umask(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        write_json(tmp_path / "r.json", {})
        with staging_dir(tmp_path / "artifact"):
            pass
    finally:
        os.umask(old)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "artifact").stat().st_mode & 0o777 == 0o755


def test_records_written_under_other_options_are_not_reused(tmp_path):
    from teeny_core.store import options_signature

    log = SampleLog(tmp_path / "s.jsonl")
    old, new = options_signature("fidelity", {"chunk_len": 64}), options_signature("fidelity", {"chunk_len": 32})
    assert old != new
    StoreContext(log, "fidelity", seed=0, limit=None, cache_dir=tmp_path, config=old).write({"key": "chunk-0"})
    ctx = StoreContext(SampleLog(tmp_path / "s.jsonl"), "fidelity", seed=0, limit=None, cache_dir=tmp_path, config=new)
    assert ctx.done() == set()
    ctx.write({"key": "chunk-0"})
    reread = SampleLog(tmp_path / "s.jsonl")
    assert len(reread.records) == 2 and len(reread.for_evaluator("fidelity", new)) == 1
