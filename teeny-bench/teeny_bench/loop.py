"""The one generate-and-grade loop of the code benchmarks.

A benchmark describes itself as data (a :class:`CodeTask`: how a problem is named, prompted, stopped, cut into
a program, graded and recorded); :func:`generate_and_grade` does the rest for all of them: it skips the samples
a resumed run already wrote, generates a batch while the previous one is graded in the sandbox, and writes each
record as soon as it is graded. Every benchmark seeds sample ``s`` of a run with :func:`sample_seed`.
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Sequence

from teeny_core import EvalContext, Generation, LoadedModel
from teeny_bench import errors, generation

SEED_STRIDE = 100_003


def sample_seed(run_seed: int, sample: int) -> int:
    """The ``generate()`` seed of sample index ``sample`` in a run seeded ``run_seed`` (the same in every
    benchmark, so a run seed names the same samples in each)."""
    return run_seed * SEED_STRIDE + sample


def sample_key(problem_id: str, sample: int) -> str:
    """A sample's record key: what a resumed run looks up to skip it."""
    return f"{problem_id}/{sample}"


@dataclasses.dataclass(frozen=True)
class CodeTask:
    """What one code benchmark tells the loop about its problems (``style`` is ``"completion"`` or ``"chat"``).

    ``grade`` takes ``(problem, program)`` pairs and returns one outcome each (``passed``, ``category``,
    ``detail``, ``seconds`` and any fields of the benchmark's own), all written into the sample's record;
    ``unavailable`` gives the outcome of a problem this machine cannot grade (written without generating)."""

    name: str
    problem_id: Callable[[Any], str]
    prompt: Callable[[Any, str, Any], str]  # (problem, style, tokenizer) -> prompt
    stop: Callable[[Any], Sequence[str]]  # a problem's stop strings in completion style
    program: Callable[[Any, str, str], str]  # (problem, generated text, style) -> the program graded
    grade: Callable[[list[tuple[Any, str]]], list[dict[str, Any]]]
    fields: Callable[[Any], dict[str, Any]]  # the problem's fields in its records (task_id, ...)
    unavailable: Callable[[Any], dict[str, Any] | None] = lambda problem: None


@dataclasses.dataclass
class _Sample:
    problem: Any
    sample: int
    prompt: str = ""
    program: str = ""
    gen: Generation | None = None


def generate_and_grade(task: CodeTask, model: LoadedModel, options: generation.SamplingOptions, prompt_style: str,
                       ctx: EvalContext, problems: list[Any]) -> None:
    """Sample every problem ``options.n`` times (sample-major), grade each sample and write its record, skipping
    the keys ``ctx`` already holds. Batches are ``options.batch_size`` consecutive samples, with one
    ``generate()`` call per sample index and stop set in each."""
    done = ctx.done()
    todo = [_Sample(p, s) for s in range(options.n) for p in problems
            if sample_key(task.problem_id(p), s) not in done]
    if not todo:
        return
    with ctx.progress(len(todo), task.name) as bar:
        runnable = []
        for item in todo:
            outcome = task.unavailable(item.problem)
            if outcome is None:
                runnable.append(item)
            else:  # nothing to generate: this machine cannot grade the problem
                ctx.write(_record(task, item, outcome))
                bar.advance(1)
        if not runnable:
            return
        style = generation.resolve_style(prompt_style, model.tokenizer, task.name)
        with ThreadPoolExecutor(max_workers=1) as grading:
            pending: tuple[Future, list[_Sample]] | None = None  # grade one batch while generating the next
            for start in range(0, len(runnable), options.batch_size):
                batch = runnable[start:start + options.batch_size]
                _generate(task, model, batch, style, options, ctx.seed)
                future = grading.submit(task.grade, [(item.problem, item.program) for item in batch])
                if pending is not None:
                    bar.advance(_write_graded(task, ctx, *pending))
                pending = (future, batch)
            if pending is not None:
                bar.advance(_write_graded(task, ctx, *pending))


def _generate(task: CodeTask, model: LoadedModel, batch: list[_Sample], style: str,
              options: generation.SamplingOptions, run_seed: int) -> None:
    groups: dict[tuple[int, tuple[str, ...]], list[_Sample]] = {}  # one generate() per seed and stop set
    for item in batch:
        item.prompt = task.prompt(item.problem, style, model.tokenizer)
        stop = tuple(task.stop(item.problem)) if style == "completion" else ()
        groups.setdefault((item.sample, stop), []).append(item)
    for (sample, stop), items in groups.items():
        gens = model.generate([item.prompt for item in items], max_new_tokens=options.max_new_tokens,
                              temperature=options.temperature, top_p=options.top_p, stop=list(stop) or None,
                              seed=sample_seed(run_seed, sample))
        for item, gen in zip(items, gens):
            item.gen, item.program = gen, task.program(item.problem, gen.text, style)


def _write_graded(task: CodeTask, ctx: EvalContext, future: Future, batch: list[_Sample]) -> int:
    for item, outcome in zip(batch, future.result()):
        ctx.write(_record(task, item, outcome))
    return len(batch)


def _record(task: CodeTask, item: _Sample, outcome: dict[str, Any]) -> dict[str, Any]:
    """A sample's record: its key, the problem's fields, the prompt and graded program, the outcome (its
    category blamed on the generation where that failed) and the generation's facts."""
    record = {"key": sample_key(task.problem_id(item.problem), item.sample), **task.fields(item.problem),
              "sample": item.sample, "prompt": item.prompt, "completion": item.program, **outcome}
    gen = item.gen
    if gen is not None:
        record.update(category=errors.refine_for_generation(outcome["category"], item.program, gen.finish_reason),
                      gen_tokens=gen.tokens, gen_seconds=round(gen.seconds, 4), finish_reason=gen.finish_reason)
        if gen.text != item.program:
            record["raw"] = gen.text
    return record
