"""The one generate-and-grade loop: the seeds and record keys runs written before it used, resuming such a run,
batching, and problems this machine cannot grade."""

from __future__ import annotations

from teeny_core.store import MemoryContext
from teeny_core.testing import answering_model
from teeny_bench.generation import SamplingOptions
from teeny_bench.humaneval import HumanEval, load_problems
from teeny_bench.loop import CodeTask, generate_and_grade, sample_key, sample_seed


def test_sample_seeds_and_keys_are_those_earlier_runs_used():
    # Pinned from main before the loop existed: seed * 100_003 + sample, and "<problem id>/<sample>".
    assert sample_seed(7, 2) == 700_023
    assert sample_seed(0, 1) == 1
    assert sample_key("HumanEval/0", 3) == "HumanEval/0/3"


def test_a_store_written_before_the_loop_resumes_without_redoing_its_samples(tmp_path):
    problems = load_problems()[:3]
    answers = {p.prompt: p.canonical_solution for p in problems}
    ctx = MemoryContext(cache_dir=tmp_path, seed=7)
    # A record as a run on main wrote it (its key is all a resume reads).
    ctx.records.append({"key": "HumanEval/1/0", "task_id": "HumanEval/1", "sample": 0, "passed": True,
                        "category": "passed"})
    model = answering_model(answers)
    HumanEval().evaluate(model, HumanEval.Options.from_mapping({"limit": 3, "prompt_style": "completion"}), ctx)
    asked = [prompt for prompts, _ in model.calls for prompt in prompts]
    assert asked == [problems[0].prompt, problems[2].prompt]
    assert {kwargs["seed"] for _, kwargs in model.calls} == {700_021}
    assert sorted(r["key"] for r in ctx.records) == ["HumanEval/0/0", "HumanEval/1/0", "HumanEval/2/0"]
    assert all(r["passed"] for r in ctx.records)


def _task(graded: list, unavailable=lambda problem: None) -> CodeTask:
    def grade(items):
        graded.append([problem for problem, _ in items])
        return [{"passed": program == f"right {problem}", "category": "passed" if program == f"right {problem}"
                 else "wrong_answer", "detail": "", "seconds": 0.0} for problem, program in items]

    return CodeTask(name="toy", problem_id=str, prompt=lambda p, style, tokenizer: f"solve {p}",
                    stop=lambda p: ("\n#",) if p.startswith("a") else ("\n//",),
                    program=lambda p, text, style: text.strip(), grade=grade,
                    fields=lambda p: {"task_id": p}, unavailable=unavailable)


def test_one_generate_per_sample_and_stop_set_in_each_batch_and_every_sample_graded(tmp_path):
    problems = ["a1", "a2", "b1"]
    model = answering_model({f"solve {p}": f"right {p}" for p in problems})
    graded: list = []
    options = SamplingOptions(n=2, temperature=0.8, batch_size=4)
    generate_and_grade(_task(graded), model, options, "completion", MemoryContext(tmp_path, seed=1), problems)
    calls = [(prompts, kwargs["seed"], kwargs["stop"]) for prompts, kwargs in model.calls]
    assert calls == [(["solve a1", "solve a2"], 100_003, ["\n#"]), (["solve b1"], 100_003, ["\n//"]),
                     (["solve a1"], 100_004, ["\n#"]),  # the first batch ends after four samples
                     (["solve a2"], 100_004, ["\n#"]), (["solve b1"], 100_004, ["\n//"])]
    assert graded == [["a1", "a2", "b1", "a1"], ["a2", "b1"]]


def test_records_carry_the_outcome_and_problems_that_cannot_be_graded_are_not_generated(tmp_path):
    model = answering_model({"solve a1": " right a1 ", "solve a2": "wrong"})
    ctx = MemoryContext(tmp_path)
    skipped = {"passed": False, "category": "skipped_toolchain", "detail": "no toolchain", "seconds": 0.0}
    generate_and_grade(_task([], unavailable=lambda p: skipped if p == "b1" else None), model,
                       SamplingOptions(), "completion", ctx, ["a1", "a2", "b1"])
    by_key = {r["key"]: r for r in ctx.records}
    assert [prompts for prompts, _ in model.calls] == [["solve a1", "solve a2"]]
    assert by_key["b1/0"] == {"key": "b1/0", "task_id": "b1", "sample": 0, "prompt": "", "completion": "",
                              **skipped}
    assert by_key["a1/0"]["passed"] and by_key["a1/0"]["completion"] == "right a1"
    assert by_key["a1/0"]["raw"] == " right a1 " and "raw" not in by_key["a2/0"]
    assert by_key["a2/0"]["category"] == "wrong_answer" and by_key["a2/0"]["finish_reason"] == "stop"
