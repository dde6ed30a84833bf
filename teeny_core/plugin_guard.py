"""Running a plugin's code (its import, its register hooks) so that it cannot take the ``teeny`` process down or
change what the core does.

:func:`guarded` runs one step of one plugin with: a time limit (``TEENY_PLUGIN_TIMEOUT`` seconds, default 30),
``os._exit`` turned into an exception, its standard output sent to standard error (``--json`` stays clean),
``KeyboardInterrupt`` it raises itself treated as a failure (a real Ctrl-C still stops teeny), the SIGINT and
SIGTERM handlers put back afterwards, and each exit handler it registers (``atexit``) run so that whatever it
does (exit, raise) is one line on standard error and leaves teeny's exit status alone. A step that replaces a
function, class attribute or click command callback of the core, of another plugin, of a builtin or of the
modules in :data:`WATCHED` is undone and fails with :class:`PluginTampered`.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import posix
import signal
import sys
import threading
import types
from typing import Any, Callable, Iterator, TypeVar

from teeny_core.errors import TeenyError

T = TypeVar("T")
DEFAULT_TIMEOUT_S = 30.0


class PluginFailed(Exception):
    """A plugin's step did something a plugin may not: exit the process, hang, raise KeyboardInterrupt."""


class PluginTampered(TeenyError):
    """A plugin replaced something of the core, of another plugin or a builtin (undone before this is raised)."""


def timeout_s() -> float:
    """The time limit for one plugin step, from ``TEENY_PLUGIN_TIMEOUT`` (seconds)."""
    raw = os.environ.get("TEENY_PLUGIN_TIMEOUT", "")
    try:
        value = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        raise TeenyError(f"TEENY_PLUGIN_TIMEOUT={raw!r} is not valid; expected a number of seconds > 0") from None
    if not value > 0:
        raise TeenyError(f"TEENY_PLUGIN_TIMEOUT={raw!r} is not valid; expected a number of seconds > 0")
    return value


def guarded(call: Callable[[], T], owner: str, what: str) -> T:
    """``call()`` (plugin ``owner``'s code, ``what`` it is: "import", a hook name) under the guards above."""
    before = _snapshot(owner)
    with _no_exit(), _stdout_to_stderr(), _exit_handlers_contained(owner, what), _signals_kept(what):
        result = call()
    found = _tampering(before, owner)
    if found:
        raise PluginTampered(f"{what} replaced {found[0]}" + (f" (and {len(found) - 1} more)" if len(found) > 1
                                                             else "") + "; undone, the plugin is not used")
    return result


# -- exits, output and signals -----------------------------------------------------------------------

@contextlib.contextmanager
def _no_exit() -> Iterator[None]:
    real = os._exit

    def refuse(code: int = 0) -> None:
        raise PluginFailed(f"called os._exit({code!r})")

    os._exit = posix._exit = refuse  # type: ignore[assignment]
    try:
        yield
    finally:
        os._exit = posix._exit = real  # type: ignore[assignment]


@contextlib.contextmanager
def _exit_handlers_contained(owner: str, what: str) -> Iterator[None]:
    real = atexit.register

    def register(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Callable[..., Any]:
        def contained() -> None:
            try:
                func(*args, **kwargs)
            except BaseException as exc:  # an exit handler never decides how teeny ends
                print(f"teeny: ignored an exit handler of plugin {owner} (registered at {what}): "
                      f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}", file=sys.stderr)

        real(contained)
        return func

    atexit.register = register  # type: ignore[assignment]
    try:
        yield
    finally:
        atexit.register = real  # type: ignore[assignment]


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    try:
        saved = os.dup(1)
        os.dup2(2, 1)
    except OSError:
        saved = None
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        if saved is not None:
            os.dup2(saved, 1)
            os.close(saved)


class _Expired(BaseException):
    pass


@contextlib.contextmanager
def _signals_kept(what: str) -> Iterator[None]:
    """Time limit and SIGINT/SIGTERM handlers (only the main thread can have signal handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    limit = timeout_s()
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM)}
    interrupted = []

    def on_sigint(signum: int, frame: Any) -> None:
        interrupted.append(signum)
        raise KeyboardInterrupt

    def on_alarm(signum: int, frame: Any) -> None:
        raise _Expired

    signal.signal(signal.SIGINT, on_sigint)
    signal.signal(signal.SIGALRM, on_alarm)
    previous_timer = signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        yield
    except _Expired:
        raise PluginFailed(f"{what} took longer than {limit:g} s (TEENY_PLUGIN_TIMEOUT)") from None
    except KeyboardInterrupt:
        if interrupted:
            raise
        raise PluginFailed(f"{what} raised KeyboardInterrupt") from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for sig, handler in saved.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        if previous_timer[0]:
            signal.setitimer(signal.ITIMER_REAL, *previous_timer)


# -- tampering -----------------------------------------------------------------------------------------

WATCHED = ("builtins", "sys", "os", "posix", "atexit", "signal", "json", "click")
"""Besides every ``teeny_*`` package: the modules whose functions decide what the CLI prints and how it exits."""


def _watched(module: str, owner: str) -> bool:
    top = module.split(".", 1)[0]
    return (top in WATCHED or top.startswith("teeny_")) and not _owned(module, owner)


def _owned(module: Any, owner: str) -> bool:
    return isinstance(module, str) and (module == owner or module.startswith(owner + "."))


def _is_code(value: Any) -> bool:
    return callable(value) or isinstance(value, (staticmethod, classmethod, property))


def _snapshot(owner: str) -> dict[tuple, tuple[Any, Any]]:
    """(place) -> (holder, value) for every function, class attribute and command callback of watched modules."""
    import_click = sys.modules.get("click")
    state: dict[tuple, tuple[Any, Any]] = {}
    for name, module in list(sys.modules.items()):
        if not isinstance(module, types.ModuleType) or not _watched(name, owner):
            continue
        for attr, value in list(vars(module).items()):
            if not _is_code(value):
                continue
            state[(name, attr)] = (module, value)
            if isinstance(value, type) and value.__module__ == name:
                state[(name, attr, "__dict__")] = (value, dict(vars(value)))
            if import_click is not None and isinstance(value, import_click.Command):
                state[(name, attr, "callback")] = (value, value.callback)
                for cmd_name, cmd in getattr(value, "commands", {}).items():
                    state[(name, attr, "commands", cmd_name)] = (cmd, cmd.callback)
    return state


def _tampering(before: dict[tuple, tuple[Any, Any]], owner: str) -> list[str]:
    """What the step replaced, each put back; modules it imported and patched are forgotten (imported afresh)."""
    after = _snapshot(owner)
    found = []
    for place, (holder, old) in before.items():
        if place[-1] == "__dict__":
            changed = {k: v for k, v in vars(holder).items() if _is_code(v) and old.get(k, None) is not v}
            for k in changed:
                if k in old:
                    setattr(holder, k, old[k])
                else:
                    delattr(holder, k)
                found.append(f"{place[0]}.{place[1]}.{k}")
        elif place[-1] == "callback" or place[-2:-1] == ("commands",):
            if holder.callback is not old:
                holder.callback = old
                command = f"command {place[-1]!r}" if place[-2] == "commands" else ".".join(place[:2])
                found.append(f"the callback of {command}")
        elif place in after and after[place][1] is not old:
            setattr(holder, place[1], old)
            found.append(f"{place[0]}.{place[1]}")
    known = {place[0] for place in before}
    for name, module in list(sys.modules.items()):
        if not isinstance(module, types.ModuleType) or not _watched(name, owner) or name in known:
            continue
        planted = [attr for attr, value in list(vars(module).items())
                   if _is_code(value) and _owned(getattr(value, "__module__", None), owner)]
        if planted:
            del sys.modules[name]
            found.append(f"{name}.{planted[0]}")
    return found
