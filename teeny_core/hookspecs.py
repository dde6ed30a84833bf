"""The hooks a Teeny plugin implements. Each hands the plugin a ``register`` callable.

``register(ComponentClass)`` adds a component under ``ComponentClass.name``. Keep plugin modules light:
import torch and friends inside methods, so ``teeny --help`` and ``teeny list`` stay fast.
Hooks only ever gain arguments, so a plugin written today keeps working.
"""

import pluggy

hookspec = pluggy.HookspecMarker("teeny")


@hookspec
def teeny_register_quantizers(register):
    """Register :class:`~teeny_core.types.Quantizer` classes (e.g. ``rtn``, ``gptq``)."""


@hookspec
def teeny_register_calibrators(register):
    """Register :class:`~teeny_core.types.Calibrator` classes (e.g. ``code``, ``text-file``)."""


@hookspec
def teeny_register_evaluators(register):
    """Register :class:`~teeny_core.types.Evaluator` classes (e.g. ``fidelity``, ``humaneval``)."""


@hookspec
def teeny_register_profilers(register):
    """Register :class:`~teeny_core.types.HardwareProfiler` classes (e.g. ``system``)."""


@hookspec
def teeny_register_runtimes(register):
    """Register :class:`~teeny_core.types.Runtime` classes (e.g. ``transformers``, ``llama.cpp``)."""


@hookspec
def teeny_register_analyzers(register):
    """Register :class:`~teeny_core.types.Analyzer` classes (e.g. ``significance``)."""


@hookspec
def teeny_register_executors(register):
    """Register :class:`~teeny_core.executor.Executor` classes (e.g. ``local``, ``ray``)."""


@hookspec
def teeny_register_commands(cli):
    """Add click commands or groups to the ``teeny`` CLI with ``cli.add_command(...)``."""


@hookspec
def teeny_report_sections(results, run_dir, plots):
    """Return a list of :class:`~teeny_core.report.ReportSection`: what this plugin shows in the run's report.

    ``results`` is the run's results dict (``results.json``), ``run_dir`` its directory; draw plots (PNG files
    under ``run_dir / "plots"``) only when ``plots`` is true. A renderer that raises gets one line in its place.
    """
