"""Registers the ``ray`` executor. Ray itself is imported only when a run uses it."""

from teeny_core import hookimpl

from teeny_ray.executor import RayExecutor


@hookimpl
def teeny_register_executors(register):
    register(RayExecutor)
