"""The run store survives crashes: torn JSONL lines are quarantined, JSON writes are atomic, staging never leaks."""

import json

import pytest

from teeny_core.store import SampleLog, StoreContext, read_json, staging_dir, write_json


def test_torn_last_line_is_quarantined_and_the_rest_kept(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_text('{"key": "a", "evaluator": "e"}\n{"key": "b", "evaluator": "e"}\n{"key": "c", "eva')
    log = SampleLog(path)
    assert [r["key"] for r in log.records] == ["a", "b"]
    assert log.quarantined == 1 and log.quarantine_path.read_text() == '{"key": "c", "eva\n'
    log.append({"key": "c", "evaluator": "e"})
    assert [json.loads(x)["key"] for x in path.read_text().splitlines()] == ["a", "b", "c"]


def test_a_samples_file_that_is_a_directory_is_named(tmp_path):
    from teeny_core.errors import BadFileError

    (tmp_path / "samples.jsonl").mkdir()
    with pytest.raises(BadFileError, match="samples.jsonl: is a directory; expected the JSONL file"):
        SampleLog(tmp_path / "samples.jsonl")


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


# A writer in another process: stages ``final`` (through build_once with "build_once" in argv), writes
# mine.txt, says it is ready, then waits for the word "go" before it commits.
WRITER = """
import sys, time
from pathlib import Path
from teeny_core.store import build_once, staging_dir
final, ready, go = map(Path, sys.argv[1:4])

def build(tmp):
    (tmp / "mine.txt").write_text("first")
    ready.write_text("ready")
    while not go.exists():
        time.sleep(0.02)

if sys.argv[4] == "build_once":
    build_once(final, "mine.txt", build)
else:
    with staging_dir(final) as tmp:
        build(tmp)
"""


def _start_writer(tmp_path, how: str):
    import subprocess
    import sys
    import time

    final, ready, go = tmp_path / "out" / "artifact", tmp_path / "ready", tmp_path / "go"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(final), str(ready), str(go), how])
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert writer.poll() is None and time.monotonic() < deadline, "the writer did not start"
        time.sleep(0.02)
    return writer, final, go


def test_a_second_writer_of_the_same_directory_is_refused_and_the_first_finishes(tmp_path):
    from teeny_core.store import TargetBusy

    writer, final, go = _start_writer(tmp_path, "staging_dir")
    with pytest.raises(TargetBusy, match=r"out/artifact is being written by another teeny process \(its "
                                         r"\.staging-artifact-"):
        with staging_dir(final) as tmp:
            (tmp / "mine.txt").write_text("second")
    go.write_text("go")
    assert writer.wait(60) == 0
    assert (final / "mine.txt").read_text() == "first"  # the first writer's work was neither deleted nor mixed
    assert [p.name for p in final.parent.iterdir()] == ["artifact"]


def test_a_killed_writers_staging_dir_is_removed_by_the_next_one(tmp_path):
    writer, final, go = _start_writer(tmp_path, "staging_dir")
    writer.kill()
    writer.wait(60)
    assert [p.name.startswith(".staging-artifact-") for p in final.parent.iterdir()] == [True]
    with staging_dir(final) as tmp:
        (tmp / "mine.txt").write_text("second")
    assert [p.name for p in final.parent.iterdir()] == ["artifact"]
    assert (final / "mine.txt").read_text() == "second"


def test_build_once_waits_for_the_build_under_way_and_takes_its_result(tmp_path):
    import threading

    from teeny_core.store import build_once

    writer, final, go = _start_writer(tmp_path, "build_once")
    built, result = [], []
    waiter = threading.Thread(target=lambda: result.append(build_once(final, "mine.txt", built.append)))
    waiter.start()
    waiter.join(1.0)
    assert waiter.is_alive()  # waiting for the other process, not building it a second time
    go.write_text("go")
    waiter.join(60)
    assert writer.wait(60) == 0
    assert result == [final] and built == [] and (final / "mine.txt").read_text() == "first"


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


def test_a_garbled_middle_line_is_quarantined_and_the_lines_after_it_kept(tmp_path):
    path = tmp_path / "samples.jsonl"
    good = [json.dumps({"key": k, "evaluator": "e"}) for k in "abcdefghij"]
    lines = good[:2] + ["garbage", "null"] + good[2:]
    path.write_text("\n".join(lines) + "\n" + '{"key": "z", "eva')
    log = SampleLog(path)
    assert [r["key"] for r in log.records] == list("abcdefghij")
    assert log.quarantined == 3
    assert log.quarantine_path.read_text() == '{"key": "z", "eva\ngarbage\nnull\n'
    assert path.read_text() == "\n".join(good) + "\n"  # repaired on disk
    assert SampleLog(path).quarantined == 0  # quarantined once, not again on the next open


def test_each_key_counts_once_whatever_the_file_holds(tmp_path):
    path = tmp_path / "samples.jsonl"
    rows = [{"key": "a", "evaluator": "e", "config": "c", "v": 1}, {"key": "b", "evaluator": "e", "config": "c", "v": 2},
            {"key": "a", "evaluator": "e", "config": "c", "v": 9}, {"key": "a", "evaluator": "f", "config": "c", "v": 3}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    log = SampleLog(path)
    assert [(r["key"], r["v"]) for r in log.for_evaluator("e", "c")] == [("a", 1), ("b", 2)]  # the first write wins
    assert [r["v"] for r in log.for_evaluator("f")] == [3]


def test_read_json_names_a_garbled_or_mistyped_file(tmp_path):
    from teeny_core.errors import BadFileError

    (tmp_path / "done.json").write_text("{not json")
    with pytest.raises(BadFileError, match=r"done.json: not valid JSON"):
        read_json(tmp_path / "done.json", {})
    (tmp_path / "profile.json").write_text("[]")
    with pytest.raises(BadFileError, match=r"profile.json: expected a JSON object, found \[\]"):
        read_json(tmp_path / "profile.json", {}, expect=dict)


def test_a_run_directory_is_locked_and_a_dead_holder_is_taken_over(tmp_path):
    import os
    import socket
    import subprocess
    import sys

    from teeny_core.errors import TeenyError
    from teeny_core.store import RunLock

    with RunLock(tmp_path):
        with pytest.raises(TeenyError) as info:
            RunLock(tmp_path).__enter__()
        message = str(info.value)
        assert f"pid {os.getpid()} on host {socket.gethostname()}" in message and "\n" not in message
        code = "import sys; from teeny_core.store import RunLock; RunLock(sys.argv[1]).__enter__()"
        other = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True)
        assert other.returncode != 0 and f"pid {os.getpid()}" in other.stderr
    # a holder that died without unlocking (kill -9) leaves its pid behind; the next run takes over
    dead = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True)
    assert dead.returncode == 0, dead.stderr
    with RunLock(tmp_path):
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()


def test_disk_full_is_one_error_and_leaves_the_old_file(tmp_path, monkeypatch):
    import errno
    import os

    from teeny_core.errors import DiskFullError

    write_json(tmp_path / "m.json", {"a": 1})

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(DiskFullError, match="no space left on the device while writing .*m.json"):
        write_json(tmp_path / "m.json", {"a": 2})
    with pytest.raises(DiskFullError):
        SampleLog(tmp_path / "s.jsonl").append({"key": "x"})
    with pytest.raises(DiskFullError, match="while writing .*art"):
        with staging_dir(tmp_path / "art") as tmp:
            raise RuntimeError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })')
    monkeypatch.undo()
    assert read_json(tmp_path / "m.json") == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "s.jsonl"]
