"""``teeny bench check BENCH``: grade a benchmark's reference solutions on this machine (proves the harness)."""

from __future__ import annotations

import click

# bench name -> function(options: dict) -> (passed, total, failures); filled in as benchmarks land.
CHECKS: dict = {}


@click.group("bench")
def bench() -> None:
    """Code benchmarks (teeny-bench): check the harness and toolchains before a long run."""


@bench.command("check")
@click.argument("name")
def check(name: str) -> None:
    """Grade the reference solutions of benchmark NAME and print passed/total."""
    if name not in CHECKS:
        raise click.ClickException(f"unknown benchmark {name!r}; expected one of {', '.join(sorted(CHECKS)) or 'none'}")
