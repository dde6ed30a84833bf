"""Third-party plugins, installed into a temporary directory the way pip installs them (a module plus a
``*.dist-info`` with ``entry_points.txt``): found by `teeny plugins`, usable by `teeny run`; broken ones are
listed with their error and skipped while the rest works; TEENY_STRICT_PLUGINS re-raises;
TEENY_LOAD_PLUGINS and TEENY_DISABLE_PLUGINS select."""

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

BUILTINS = ("rtn", "calibrators", "transformers_runtime", "fidelity", "system_profiler")

GOOD = '''
    """A working third-party plugin: a bfloat16-rounding quantizer and a CLI command."""
    import click

    from teeny_core import Artifact, Quantizer, hookimpl


    class Bf16Round(Quantizer):
        """Store every weight rounded to bfloat16."""

        name = "tp-bf16"

        def quantize(self, source, calibration, options, out_dir):
            from teeny_core.modeling import save_hf_model

            model, tokenizer = source.load(dtype="bfloat16")
            save_hf_model(model, tokenizer, out_dir)
            artifact = Artifact("hf", out_dir, {"method": "tp-bf16"})
            artifact.save()
            return artifact


    @click.command("tp-hello")
    def hello():
        """Say hello (a command added by a plugin)."""
        click.echo("hello from teeny-tp-good")


    @hookimpl
    def teeny_register_quantizers(register):
        register(Bf16Round)


    @hookimpl
    def teeny_register_commands(cli):
        cli.add_command(hello)
'''

BROKEN_IMPORT = '''
    raise ImportError("teeny-tp-broken needs libfrobnicate >= 2")
'''

BROKEN_REGISTER = '''
    from teeny_core import hookimpl


    @hookimpl
    def teeny_register_quantizers(register):
        raise RuntimeError("no kernels for this CPU")
'''

NOT_A_COMPONENT = '''
    from teeny_core import hookimpl


    class Fast:
        name = "tp-fast"


    @hookimpl
    def teeny_register_quantizers(register):
        register(Fast)
'''

HALF_REGISTERED = '''
    from teeny_core import hookimpl
    from teeny_core.builtin.rtn import RTNQuantizer


    class Half(RTNQuantizer):
        """Registered just before the hook fails."""

        name = "tp-half"


    @hookimpl
    def teeny_register_quantizers(register):
        register(Half)
        raise RuntimeError("the second quantizer needs CUDA")
'''

EXITS_ON_IMPORT = '''
    import sys

    sys.exit("teeny-tp-exit: unsupported platform")
'''

SHADOWS_RUN = '''
    import click

    from teeny_core import hookimpl


    @click.command("run")
    def run():
        """A plugin's own `run` that would silently replace the built-in."""
        click.echo("hijacked")


    @hookimpl
    def teeny_register_commands(cli):
        cli.add_command(run)
'''

UNRELATED = '''
    """A plugin whose entry point happens to be named like a built-in."""
'''


def install(site: Path, dist: str, entry: str, module: str, source: str, version: str = "1.0.0") -> None:
    """What `pip install` leaves behind: the module and a dist-info with METADATA and entry_points.txt."""
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{module}.py").write_text(textwrap.dedent(source).lstrip())
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[teeny]\n{entry} = {module}\n")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    site = tmp_path_factory.mktemp("third-party") / "site"
    install(site, "teeny-tp-good", "tp-good", "teeny_tp_good", GOOD, version="1.2.3")
    install(site, "teeny-tp-broken", "tp-broken", "teeny_tp_broken", BROKEN_IMPORT)
    install(site, "teeny-tp-badreg", "tp-badreg", "teeny_tp_badreg", BROKEN_REGISTER)
    install(site, "teeny-tp-notcomp", "tp-notcomp", "teeny_tp_notcomp", NOT_A_COMPONENT)
    install(site, "teeny-tp-exit", "tp-exit", "teeny_tp_exit", EXITS_ON_IMPORT)
    install(site, "teeny-tp-shadow", "tp-shadow", "teeny_tp_shadow", SHADOWS_RUN)
    return site


def teeny(site: Path, *args: str, cwd: Path | None = None, **env_extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEENY_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), env.get("PYTHONPATH", "")) if p)
    env["COLUMNS"] = "250"
    env.update(env_extra)
    return subprocess.run([sys.executable, "-m", "teeny_core.cli", *args], cwd=cwd or site.parent, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture
def load(monkeypatch):
    """Plugins.load() in this process with ``site`` on sys.path and the given TEENY_* variables."""
    def _load(site: Path, **env: str):
        from teeny_core.plugins import Plugins

        for var in ("TEENY_STRICT_PLUGINS", "TEENY_LOAD_PLUGINS", "TEENY_DISABLE_PLUGINS"):
            monkeypatch.delenv(var, raising=False)
        for var, value in env.items():
            monkeypatch.setenv(var, value)
        monkeypatch.syspath_prepend(str(site))
        return Plugins.load()

    return _load


def external(plugins) -> set[str]:
    return {name for name, info in plugins.infos.items() if not info.builtin}


# --- teeny plugins --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def plugins_json(site) -> dict[str, dict]:
    out = teeny(site, "plugins", "--json")
    assert out.returncode == 0, out.stderr
    return {info["name"]: info for info in json.loads(out.stdout)}


def test_json_lists_the_working_plugin_with_version_hooks_and_components(plugins_json):
    assert plugins_json["tp-good"] == {
        "name": "tp-good", "distribution": "teeny-tp-good", "version": "1.2.3", "builtin": False,
        "hooks": ["teeny_register_quantizers", "teeny_register_commands"],
        "components": ["quantizer:tp-bf16"], "error": None, "unavailable": {}}


def test_json_lists_a_plugin_that_raises_on_import_as_broken(plugins_json):
    info = plugins_json["tp-broken"]
    assert info["error"] == "ImportError: teeny-tp-broken needs libfrobnicate >= 2"
    assert info["hooks"] == [] and info["components"] == []


def test_json_lists_a_plugin_whose_register_hook_raises_as_broken(plugins_json):
    assert plugins_json["tp-badreg"]["error"] == "teeny_register_quantizers failed: RuntimeError: no kernels for this CPU"
    error = plugins_json["tp-notcomp"]["error"]
    assert error.startswith("teeny_register_quantizers failed: TypeError: ") and "is not a Quantizer subclass" in error
    assert plugins_json["tp-notcomp"]["components"] == []


def test_a_plugin_that_calls_sys_exit_on_import_is_listed_as_broken(plugins_json):
    assert plugins_json["tp-exit"]["error"] == "SystemExit: teeny-tp-exit: unsupported platform"


def test_a_plugin_command_named_like_a_builtin_is_refused(site, plugins_json):
    assert plugins_json["tp-shadow"]["error"] == ("teeny_register_commands failed: TeenyError: command 'run' is "
                                                  "already a teeny command; rename the plugin's command")
    out = teeny(site, "run", "--help")
    assert out.returncode == 0 and "Run EXPERIMENT" in out.stdout and "hijacked" not in out.stdout


def test_json_keeps_every_builtin_working(plugins_json):
    for name in BUILTINS:
        assert plugins_json[name]["builtin"] is True and plugins_json[name]["error"] is None, plugins_json[name]
    assert "quantizer:rtn" in plugins_json["rtn"]["components"]


def test_table_shows_broken_plugins_with_their_error(site):
    out = teeny(site, "plugins")
    assert out.returncode == 0, out.stderr
    rows = {line.split("│")[1].strip(): line for line in out.stdout.splitlines() if line.count("│") > 2}
    assert "broken: ImportError: teeny-tp-broken needs libfrobnicate >= 2" in rows["tp-broken"]
    assert "broken: teeny_register_quantizers failed: RuntimeError: no kernels for this CPU" in rows["tp-badreg"]
    assert "1.2.3" in rows["tp-good"] and "ok" in rows["tp-good"] and "quantizer:tp-bf16" in rows["tp-good"]
    assert "teeny-tp-good" in rows["tp-good"] and "teeny-core" in rows["rtn"]  # the name a user pip-installed
    assert "built-in" in rows["rtn"]


def test_traceback_option_shows_where_an_import_failed(site):
    """A plugin author sees the file and line their plugin failed at, not only the one-line error."""
    out = teeny(site, "plugins", "--traceback")
    assert out.returncode == 0, out.stderr
    after_table = out.stdout.split("tp-broken (teeny-tp-broken): ImportError", 1)[1]
    assert "Traceback (most recent call last)" in after_table and "libfrobnicate" in after_table
    own_frame = after_table.split("\n\n", 1)[0]  # this plugin's block: its module's file and line
    assert "teeny_tp_broken" in own_frame and ", line " in own_frame
    assert "Traceback" not in teeny(site, "plugins").stdout


def test_a_plugin_command_runs(site):
    out = teeny(site, "tp-hello")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "hello from teeny-tp-good"


# --- teeny run ------------------------------------------------------------------------------------

def test_teeny_run_uses_the_plugin_quantizer_while_broken_plugins_are_installed(site, tiny_model):
    from safetensors.torch import load_file

    work = site.parent
    (work / "exp.toml").write_text(textwrap.dedent(f'''\
        name = "third-party"
        model = "{tiny_model("llama")}"
        output_dir = "{work / 'runs'}"
        device = "cpu"
        [evaluators.fidelity]
        chunks = 2
        chunk_len = 64
        [profilers.system]
        benchmark = false
        [[variants]]
        name = "bf16"
        method = "tp-bf16"
        '''))
    out = teeny(site, "run", "exp.toml", cwd=work)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "bf16" in out.stdout and "tp-bf16" in out.stdout
    root = work / "runs" / "third-party"
    [_, variant] = json.loads((root / "results.json").read_text())["variants"]
    assert variant["name"] == "bf16" and variant["method"] == "tp-bf16"
    fid = variant["metrics"]["fidelity"]
    assert all(math.isfinite(fid[k]) for k in ("perplexity", "kl_mean", "top1_mean"))
    assert 0 < fid["kl_mean"] < 1e-2 and fid["top1_mean"] > 0.9  # bfloat16 rounding barely moves a model
    weights = load_file(root / "bf16" / "artifact" / "model.safetensors")
    assert {str(t.dtype) for t in weights.values()} == {"torch.bfloat16"}


# --- loading rules --------------------------------------------------------------------------------

def test_strict_plugins_reraises_an_import_error(site):
    out = teeny(site, "plugins", TEENY_STRICT_PLUGINS="1", TEENY_LOAD_PLUGINS="tp-broken")
    assert out.returncode != 0
    assert "Traceback" in out.stderr and "ImportError: teeny-tp-broken needs libfrobnicate >= 2" in out.stderr


def test_strict_plugins_reraises_a_failing_register_hook(site, load):
    with pytest.raises(RuntimeError, match="no kernels for this CPU"):
        load(site, TEENY_STRICT_PLUGINS="1", TEENY_LOAD_PLUGINS="tp-badreg")


def test_load_plugins_selects_external_plugins_and_keeps_builtins(site, load):
    plugins = load(site, TEENY_LOAD_PLUGINS="tp-good")
    assert external(plugins) == {"tp-good"}
    assert set(BUILTINS) <= set(plugins.infos)
    assert plugins.get("quantizer", "tp-bf16").name == "tp-bf16"
    assert external(load(site, TEENY_LOAD_PLUGINS="")) == set()
    assert external(load(site, TEENY_LOAD_PLUGINS=" tp-good , tp-broken ")) == {"tp-good", "tp-broken"}


def test_disable_plugins_skips_external_and_builtin_plugins(site, load):
    from teeny_core.errors import TeenyError

    plugins = load(site, TEENY_DISABLE_PLUGINS="tp-broken,rtn")
    assert "tp-broken" not in plugins.infos and "rtn" not in plugins.infos
    assert {"tp-good", "tp-badreg", "fidelity"} <= set(plugins.infos)
    assert "rtn" not in plugins.names("quantizer") and "tp-bf16" in plugins.names("quantizer")
    with pytest.raises(TeenyError, match="unknown quantizer 'rtn'; installed quantizers: .*tp-bf16"):
        plugins.get("quantizer", "rtn")


def test_broken_plugins_leave_the_rest_usable_in_process(site, load):
    plugins = load(site)
    assert plugins.infos["tp-broken"].error and plugins.infos["tp-badreg"].error
    assert plugins.infos["tp-good"].error is None
    assert {"rtn", "tp-bf16"} <= set(plugins.names("quantizer"))
    assert "tp-fast" not in plugins.names("quantizer")


def test_a_plugin_whose_hook_fails_registers_nothing(tmp_path, load):
    install(tmp_path, "teeny-tp-half", "tp-half", "teeny_tp_half", HALF_REGISTERED)
    plugins = load(tmp_path, TEENY_LOAD_PLUGINS="tp-half")
    assert "RuntimeError: the second quantizer needs CUDA" in plugins.infos["tp-half"].error
    assert "tp-half" not in plugins.names("quantizer")


def test_an_entry_point_named_like_a_builtin_does_not_remove_the_builtin(tmp_path, load):
    install(tmp_path, "teeny-tp-clash", "rtn", "teeny_tp_clash", UNRELATED)
    plugins = load(tmp_path, TEENY_LOAD_PLUGINS="rtn")
    assert "rtn" in plugins.names("quantizer")
    assert plugins.infos["rtn"].builtin and plugins.infos["rtn"].error is None
    [clash] = [i for i in plugins.infos.values() if i.name.startswith("rtn~")]
    assert "plugin name 'rtn' is already taken by a built-in plugin" in clash.error


# --- hostile plugins: none can stop a core command, change its exit status or patch the core -----------

HOSTILE = {
    "exit-import": ("import os\nos._exit(0)\n", "PluginFailed: called os._exit(0)"),
    "exit-hook": ('''
        import os

        from teeny_core import hookimpl


        @hookimpl
        def teeny_register_quantizers(register):
            os._exit(0)
        ''', "teeny_register_quantizers failed: PluginFailed: called os._exit(0)"),
    "interrupt": ("raise KeyboardInterrupt\n", "PluginFailed: import raised KeyboardInterrupt"),
    "sleeps": ("import time\ntime.sleep(3600)\n", "import took longer than 3 s (TEENY_PLUGIN_TIMEOUT)"),
    "prints": ('import os\nprint("hello from a plugin")\nos.write(1, b"raw bytes on fd 1\\n")\n', None),
    "atexit": ("import atexit, os\natexit.register(os._exit, 0)\n", None),
    "nosigint": ("import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n", None),
    "run-callback": ('''
        from teeny_core.cli import cli

        cli.commands["run"].callback = lambda **kwargs: print("hijacked")
        ''', "replaced the callback of command 'run'"),
    "grader": ('''
        import teeny_bench.humaneval

        teeny_bench.humaneval.grade_humaneval = lambda *args, **kwargs: [True] * len(args[0])
        ''', "replaced teeny_bench.humaneval.grade_humaneval"),
    "error-str": ('''
        from teeny_core import TeenyError

        TeenyError.__str__ = lambda self: "all is well"
        ''', "replaced teeny_core.errors.TeenyError.__str__"),
}


@pytest.fixture(scope="module")
def hostile_site(tmp_path_factory) -> Path:
    site = tmp_path_factory.mktemp("hostile") / "site"
    for name, (source, _) in HOSTILE.items():
        install(site, f"teeny-tp-{name}", f"tp-{name}", f"teeny_tp_{name.replace('-', '_')}", source)
    return site


def test_hostile_plugins_are_listed_as_broken_and_json_stays_clean(hostile_site):
    out = teeny(hostile_site, "plugins", "--json", TEENY_PLUGIN_TIMEOUT="3")
    assert out.returncode == 0, out.stdout + out.stderr
    infos = {info["name"]: info for info in json.loads(out.stdout)}  # nothing the plugins printed mixed in
    assert "hello from a plugin" in out.stderr and "raw bytes on fd 1" in out.stderr
    for name, (_, error) in HOSTILE.items():
        if error is not None:
            assert error in (infos[f"tp-{name}"]["error"] or ""), infos[f"tp-{name}"]
    for name in BUILTINS:
        assert infos[name]["error"] is None


@pytest.mark.parametrize("args,status,says", [
    (["--help"], 0, "Commands:"),
    (["list", "quantizer"], 0, "rtn"),
    (["run", "missing.toml"], 2, "Error: experiment file 'missing.toml' does not exist"),
    (["quantize", "missing-model", "-m", "nope", "--out", "o"], 2, "Error: unknown quantizer 'nope'"),
])
def test_hostile_plugins_do_not_stop_core_commands_or_change_their_exit_status(hostile_site, args, status, says):
    out = teeny(hostile_site, *args, TEENY_PLUGIN_TIMEOUT="3")
    assert out.returncode == status, out.stdout[-2000:] + out.stderr[-2000:]
    assert says in out.stdout + out.stderr


def test_a_plugin_ignoring_sigint_leaves_ctrl_c_working(tmp_path, load):
    import signal

    install(tmp_path, "teeny-tp-nosigint", "tp-nosigint", "teeny_tp_nosigint", HOSTILE["nosigint"][0])
    # Python's own handler first: a suite started in the background (nohup ... &) inherits SIGINT ignored
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        load(tmp_path, TEENY_LOAD_PLUGINS="tp-nosigint")
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, inherited)


@pytest.mark.parametrize("name", ["run-callback", "grader", "error-str"])
def test_a_plugin_that_patches_the_core_is_broken_and_undone(tmp_path, load, name):
    import teeny_bench.humaneval
    from teeny_core.cli import cli
    from teeny_core.errors import TeenyError

    originals = (cli.commands["run"].callback, teeny_bench.humaneval.grade_humaneval)
    install(tmp_path, f"teeny-tp-{name}", f"tp-{name}", f"teeny_tp_{name.replace('-', '_')}", HOSTILE[name][0])
    plugins = load(tmp_path, TEENY_LOAD_PLUGINS=f"tp-{name}")
    assert HOSTILE[name][1] in plugins.infos[f"tp-{name}"].error
    assert (cli.commands["run"].callback, teeny_bench.humaneval.grade_humaneval) == originals
    assert str(TeenyError("a real problem")) == "a real problem"


def test_strict_plugins_still_reraises_what_the_guard_caught(tmp_path, load):
    from teeny_core.plugin_guard import PluginFailed

    install(tmp_path, "teeny-tp-exit-import", "tp-exit-import", "teeny_tp_exit_import", HOSTILE["exit-import"][0])
    with pytest.raises(PluginFailed, match=r"called os._exit\(0\)"):
        load(tmp_path, TEENY_STRICT_PLUGINS="1", TEENY_LOAD_PLUGINS="tp-exit-import")


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_each_hostile_plugin_alone_leaves_an_error_one_line_with_status_2(hostile_site, name):
    out = teeny(hostile_site, "run", "missing.toml", TEENY_PLUGIN_TIMEOUT="3", TEENY_LOAD_PLUGINS=f"tp-{name}")
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    assert "Error: experiment file 'missing.toml' does not exist" in out.stderr.splitlines()
    assert "Traceback" not in out.stderr


def test_a_plugin_that_replaces_sys_exit_cannot_turn_an_error_into_success(tmp_path):
    install(tmp_path, "teeny-tp-noexit", "tp-noexit", "teeny_tp_noexit", "import sys\nsys.exit = lambda *args: None\n")
    out = teeny(tmp_path, "run", "missing.toml", TEENY_LOAD_PLUGINS="tp-noexit")
    assert out.returncode == 2, out.stdout + out.stderr
    listing = teeny(tmp_path, "plugins", "--json", TEENY_LOAD_PLUGINS="tp-noexit")
    listed = {i["name"]: i for i in json.loads(listing.stdout)}
    assert "replaced sys.exit" in listed["tp-noexit"]["error"]


AVAILABLE_EXITS = '''
    import os

    from teeny_core import hookimpl
    from teeny_core.builtin.rtn import RTNQuantizer


    class Exits(RTNQuantizer):
        """A quantizer whose availability check ends the process."""

        name = "tp-exits"

        @classmethod
        def available(cls):
            os._exit(0)


    @hookimpl
    def teeny_register_quantizers(register):
        register(Exits)
'''


def test_a_component_whose_available_check_exits_is_listed_as_unavailable(tmp_path):
    install(tmp_path, "teeny-tp-avail", "tp-avail", "teeny_tp_avail", AVAILABLE_EXITS)
    out = teeny(tmp_path, "plugins", "--json", TEENY_LOAD_PLUGINS="tp-avail")
    assert out.returncode == 0, out.stdout + out.stderr
    info = {i["name"]: i for i in json.loads(out.stdout)}["tp-avail"]
    assert info["unavailable"] == {"quantizer:tp-exits": "available() failed: PluginFailed: called os._exit(0)"}
    listed = teeny(tmp_path, "list", "quantizer", TEENY_LOAD_PLUGINS="tp-avail")
    assert listed.returncode == 0 and "tp-exits" in listed.stdout and "available() failed" in listed.stdout
