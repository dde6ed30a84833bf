"""Plugin discovery: built-ins and entry points of group ``teeny``, each loaded on its own.

A plugin that fails to import or to register (any exception, ``sys.exit()``, ``os._exit()``, its own
``KeyboardInterrupt`` or a hang past ``TEENY_PLUGIN_TIMEOUT`` included; see :mod:`teeny_core.plugin_guard`) is
recorded with its error and skipped (``TEENY_STRICT_PLUGINS=1`` re-raises), and so is one that adds a CLI command
whose name is taken or that replaces code of the core, another plugin or a builtin. ``TEENY_LOAD_PLUGINS=a,b``
loads only those external plugins; ``TEENY_DISABLE_PLUGINS=a,b`` skips plugins by name, built-ins included.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import traceback
from importlib import metadata

import pluggy

from teeny_core import hookspecs
from teeny_core.errors import TeenyError, one_line
from teeny_core.executor import Executor
from teeny_core.plugin_guard import guarded
from teeny_core.types import (Analyzer, Calibrator, Component, Evaluator, HardwareProfiler, Quantizer,
                              Runtime)

ENTRY_POINT_GROUP = "teeny"

BUILTIN_PLUGINS = (
    "teeny_core.builtin.rtn",
    "teeny_core.builtin.calibrators",
    "teeny_core.builtin.transformers_runtime",
    "teeny_core.builtin.fidelity",
    "teeny_core.builtin.system_profiler",
    "teeny_core.builtin.local_executor",
)

# kind -> (hook name, interface every registered class must subclass)
KINDS: dict[str, tuple[str, type[Component]]] = {
    "quantizer": ("teeny_register_quantizers", Quantizer),
    "calibrator": ("teeny_register_calibrators", Calibrator),
    "evaluator": ("teeny_register_evaluators", Evaluator),
    "profiler": ("teeny_register_profilers", HardwareProfiler),
    "runtime": ("teeny_register_runtimes", Runtime),
    "analyzer": ("teeny_register_analyzers", Analyzer),
    "executor": ("teeny_register_executors", Executor),
}


@dataclasses.dataclass
class PluginInfo:
    """What ``teeny plugins`` shows for one plugin."""

    name: str
    version: str
    builtin: bool
    distribution: str = "teeny-core"  # what a user installed (pip name), e.g. teeny-gptq
    hooks: list[str] = dataclasses.field(default_factory=list)
    components: list[str] = dataclasses.field(default_factory=list)
    error: str | None = None
    traceback: str | None = dataclasses.field(default=None, repr=False)  # `teeny plugins --traceback`


@dataclasses.dataclass
class Registered:
    cls: type[Component]
    plugin: str


class Plugins:
    """The loaded plugins and the components they registered, by kind and name."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("teeny")
        self.pm.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}
        self.components: dict[str, dict[str, Registered]] = {kind: {} for kind in KINDS}
        self._registered: set[str] = set()

    # -- loading ---------------------------------------------------------------------------------
    @classmethod
    def load(cls) -> "Plugins":
        plugins = cls()
        disabled = _env_set("TEENY_DISABLE_PLUGINS")
        only = _env_set("TEENY_LOAD_PLUGINS")
        for module_name in BUILTIN_PLUGINS:
            short = module_name.rsplit(".", 1)[1]
            if short not in disabled:
                plugins._add(short, lambda m=module_name: importlib.import_module(m), builtin=True, module=module_name)
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in disabled or (only is not None and ep.name not in only):
                continue
            version = ep.dist.version if ep.dist else "?"
            dist = ep.dist.metadata["Name"] if ep.dist else "?"
            plugins._add(ep.name, ep.load, builtin=False, version=version, distribution=dist, module=ep.module)
        plugins._register_all()
        return plugins

    def _add(self, name: str, loader, *, builtin: bool, version: str | None = None,
             distribution: str = "teeny-core", module: str = "") -> None:
        from teeny_core import __version__

        key = name if name not in self.infos else f"{name}~{len(self.infos)}"
        info = PluginInfo(name=key, version=version or __version__, builtin=builtin, distribution=distribution)
        self.infos[key] = info
        try:
            if key != name:
                taken = "a built-in plugin" if self.infos[name].builtin else "another plugin"
                raise TeenyError(f"plugin name {name!r} is already taken by {taken}; rename the entry point")
            self.pm.register(loader() if builtin else guarded(loader, module, "import"), name=name)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # a broken plugin never takes the host down, not even with sys.exit()
            if os.environ.get("TEENY_STRICT_PLUGINS") == "1":
                raise
            info.error = one_line(exc)
            info.traceback = traceback.format_exc()

    def _register_all(self) -> None:
        """Call each new plugin's register hooks; a plugin whose hook raises registers nothing at all."""
        for plugin_name, _ in self.pm.list_name_plugin():
            info = self.infos[plugin_name]
            if plugin_name in self._registered or info.error:
                continue
            self._registered.add(plugin_name)
            pending: list[tuple[str, str, type[Component]]] = []
            try:
                for kind, (hook_name, interface) in KINDS.items():
                    for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                        if impl.plugin_name == plugin_name:
                            info.hooks.append(hook_name)
                            self._call(impl, hook_name, self._registrar(kind, interface, plugin_name, pending))
            except KeyboardInterrupt:
                raise
            except BaseException as exc:
                if os.environ.get("TEENY_STRICT_PLUGINS") == "1":
                    raise
                info.error = f"{info.hooks[-1]} failed: {one_line(exc)}"
                continue
            for kind, name, cls in pending:
                self.components[kind][name] = Registered(cls, plugin_name)
                info.components.append(f"{kind}:{name}")
            if any(i.plugin_name == plugin_name for i in self.pm.hook.teeny_register_commands.get_hookimpls()):
                info.hooks.append("teeny_register_commands")

    def _call(self, impl, hook_name: str, argument) -> None:
        """One plugin's hook implementation; an external plugin's under :func:`~teeny_core.plugin_guard.guarded`."""
        if self.infos[impl.plugin_name].builtin:
            impl.function(argument)
        else:
            guarded(lambda: impl.function(argument), getattr(impl.plugin, "__name__", impl.plugin_name), hook_name)

    def _registrar(self, kind: str, interface: type[Component], plugin: str,
                   pending: list[tuple[str, str, type[Component]]]):
        def register(component: type[Component]) -> None:
            if not (isinstance(component, type) and issubclass(component, interface)):
                raise TypeError(f"{component!r} is not a {interface.__name__} subclass")
            name = getattr(component, "name", None)
            if not isinstance(name, str) or not name:
                raise TypeError(f"{component.__name__} has no 'name'")
            existing = self.components[kind].get(name)
            if existing is not None and existing.plugin != plugin:
                raise TeenyError(f"{kind} {name!r} is already registered by plugin {existing.plugin!r}")
            if any(k == kind and n == name for k, n, _ in pending):
                raise TeenyError(f"{kind} {name!r} is registered twice")
            pending.append((kind, name, component))

        return register

    def add_commands(self, cli) -> None:
        """Let plugins add CLI commands. A plugin that fails, or adds a command whose name is taken (``run``),
        adds none and is recorded as broken, never fatal; the commands already there stay."""
        for impl in self.pm.hook.teeny_register_commands.get_hookimpls():
            before = dict(cli.commands)
            try:
                self._call(impl, "teeny_register_commands", cli)
                taken = sorted(n for n, cmd in cli.commands.items() if n in before and cmd is not before[n])
                if taken:
                    raise TeenyError(f"command {taken[0]!r} is already a teeny command; rename the plugin's command")
            except KeyboardInterrupt:
                raise
            except BaseException as exc:
                cli.commands.clear()
                cli.commands.update(before)
                if os.environ.get("TEENY_STRICT_PLUGINS") == "1":
                    raise
                self.infos[impl.plugin_name].error = f"teeny_register_commands failed: {one_line(exc)}"

    # -- lookup ----------------------------------------------------------------------------------
    def names(self, kind: str) -> list[str]:
        return sorted(self.components[kind])

    def get(self, kind: str, name: str) -> type[Component]:
        """The component class registered as ``name``; a one-line error lists the valid names."""
        found = self.components[kind].get(name)
        if found is None:
            valid = ", ".join(self.names(kind)) or "none installed"
            raise TeenyError(f"unknown {kind} {name!r}; installed {kind}s: {valid}")
        return found.cls

    def unavailable(self, kind: str) -> dict[str, str]:
        """Components of ``kind`` that cannot run on this machine: name -> reason."""
        reasons = {name: self._available(reg) for name, reg in self.components[kind].items()}
        return {name: reason for name, reason in reasons.items() if reason}

    def _available(self, reg: Registered) -> str | None:
        """``reg.cls.available()``; an external plugin's runs guarded, and failing is a reason it is unavailable."""
        info = self.infos.get(reg.plugin)
        if info is None or info.builtin:  # a built-in, or a component registered directly in Python
            return reg.cls.available()
        owner = getattr(self.pm.get_plugin(reg.plugin), "__name__", reg.plugin)
        try:
            return guarded(reg.cls.available, owner, f"{reg.cls.__name__}.available()")
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            if os.environ.get("TEENY_STRICT_PLUGINS") == "1":
                raise
            return f"available() failed: {one_line(exc)}"

    def runtime_for(self, fmt: str, preferred: str | None = None, device: str = "cpu") -> type[Runtime]:
        """The runtime named ``preferred``; else the installed runtime with the highest
        :meth:`~teeny_core.types.Runtime.priority` for format ``fmt`` on ``device`` (ties: by name), among those
        available on this machine."""
        if preferred:
            cls = self.get("runtime", preferred)
            if fmt not in cls.formats:  # type: ignore[attr-defined]
                raise TeenyError(f"runtime {preferred!r} cannot load format {fmt!r}; it loads {', '.join(cls.formats)}")  # type: ignore[attr-defined]
            reason = self._available(self.components["runtime"][preferred])
            if reason:
                raise TeenyError(f"runtime {preferred!r} is unavailable here: {reason}")
            return cls  # type: ignore[return-value]
        ranked = []
        for name in self.names("runtime"):
            cls = self.components["runtime"][name].cls
            priority = cls.priority(fmt, device)  # type: ignore[attr-defined]
            if priority is not None and not self._available(self.components["runtime"][name]):
                ranked.append((-priority, name, cls))
        if not ranked:
            raise TeenyError(f"no available runtime loads artifact format {fmt!r} on {device}")
        return min(ranked, key=lambda r: r[:2])[2]  # type: ignore[return-value]


def _env_set(var: str) -> set[str] | None:
    raw = os.environ.get(var)
    if raw is None:
        return set() if var == "TEENY_DISABLE_PLUGINS" else None
    return {p.strip() for p in raw.split(",") if p.strip()}
