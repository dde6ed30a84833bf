"""docs/hooks.md stays true: every hookspec with its signature, every abstract method of every public
interface (each abstract class in ``teeny_core.__all__``) with its signature, the interfaces' class attributes,
every public name, and no hook that does not exist."""

import inspect
import re
from pathlib import Path

import pytest

import teeny_core
from teeny_core import hookspecs
from teeny_core.plugins import BUILTIN_PLUGINS, ENTRY_POINT_GROUP, KINDS

DOC = Path(__file__).resolve().parents[1] / "docs" / "hooks.md"


def doc_text() -> str:
    return DOC.read_text()


def squeeze(text: str) -> str:
    """Whitespace-free text, so a signature wrapped over several lines still matches."""
    return re.sub(r"\s+", "", text)


def hookspec_functions() -> dict:
    return {name: f for name, f in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(f, "teeny_spec")}


def interfaces() -> dict:
    """Every abstract class of the public API (the interfaces plugins implement or receive)."""
    return {name: getattr(teeny_core, name) for name in teeny_core.__all__
            if inspect.isclass(getattr(teeny_core, name)) and inspect.isabstract(getattr(teeny_core, name))}


def render(name: str, func) -> str:
    """``name(self, a: T, *, b: U = 1) -> R`` with the annotations as written in the source (unquoted)."""
    sig = inspect.signature(func)
    params = []
    star_done = False
    for p in sig.parameters.values():
        if p.kind is p.KEYWORD_ONLY and not star_done:
            params.append("*")
            star_done = True
        text = p.name
        if p.annotation is not p.empty:
            text += f": {p.annotation}"
        if p.default is not p.empty:
            text += f" = {p.default!r}"
        params.append(text)
    out = f"{name}({', '.join(params)})"
    if sig.return_annotation is not sig.empty:
        out += f" -> {sig.return_annotation}"
    return out.replace("'", "").replace('"', "")


def abstract_members():
    for cls_name, cls in interfaces().items():
        for member in sorted(cls.__abstractmethods__):
            yield cls_name, cls, member


def test_hookspecs_are_found():
    specs = hookspec_functions()
    assert set(specs) >= {f"teeny_register_{k}s" for k in KINDS} | {"teeny_register_commands"}


@pytest.mark.parametrize("name", sorted(hookspec_functions()))
def test_every_hook_is_documented_with_its_signature(name):
    signature = f"{name}{inspect.signature(hookspec_functions()[name])}"
    assert f"`{signature}`" in doc_text(), f"docs/hooks.md does not document `{signature}`"
    assert f"### `{signature}`" in doc_text(), f"docs/hooks.md has no section for `{signature}`"


def test_doc_names_no_hook_that_does_not_exist():
    named = set(re.findall(r"\bteeny_register_\w+", doc_text()))
    assert named - set(hookspec_functions()) == set()


def test_the_interfaces_are_found():
    assert {"Quantizer", "Calibrator", "Evaluator", "HardwareProfiler", "Runtime", "Analyzer", "LoadedModel",
            "EvalContext", "Executor"} <= set(interfaces())


@pytest.mark.parametrize("cls_name,cls,member", list(abstract_members()),
                         ids=[f"{c}.{m}" for c, _, m in abstract_members()])
def test_every_abstract_method_is_documented_with_its_signature(cls_name, cls, member):
    text = doc_text()
    assert f"### {cls_name}" in text, f"docs/hooks.md has no section for {cls_name}"
    section = text.split(f"### {cls_name}", 1)[1].split("\n### ", 1)[0]
    attr = inspect.getattr_static(cls, member)
    if isinstance(attr, property):
        assert f"def {member}(self)" in section, f"{cls_name}.{member} (a property) is not documented"
        return
    func = getattr(cls, member)
    func = getattr(func, "__wrapped__", func)  # contextmanager-decorated methods
    signature = render(member, func)
    assert squeeze(signature) in squeeze(section), f"{cls_name}: docs/hooks.md lacks `{signature}`"


@pytest.mark.parametrize("cls_name", sorted(interfaces()) + ["Component"])
def test_interface_class_attributes_are_documented(cls_name):
    cls = getattr(teeny_core, cls_name)
    text = doc_text()
    for attr in vars(cls).get("__annotations__", {}):
        assert re.search(rf"\b{attr}\b", text), f"{cls_name}.{attr} is not documented"


@pytest.mark.parametrize("name", sorted(set(teeny_core.__all__) - {"__version__"}))
def test_every_public_name_is_documented(name):
    assert re.search(rf"`{name}\b", doc_text()), f"docs/hooks.md does not name the public `{name}`"


def test_hook_table_pairs_each_hook_with_its_interface():
    text = doc_text()
    for hook, interface in KINDS.values():
        row = next((line for line in text.splitlines() if line.startswith(f"| `{hook}(register)`")), None)
        assert row is not None, f"no table row for {hook}"
        assert f"`{interface.__name__}` subclasses" in row


def test_loading_rules_are_documented():
    text = doc_text()
    assert f"entry-point group `{ENTRY_POINT_GROUP}`" in text
    for var in ("TEENY_STRICT_PLUGINS=1", "TEENY_LOAD_PLUGINS", "TEENY_DISABLE_PLUGINS"):
        assert var in text
    for module in BUILTIN_PLUGINS:
        assert f"`{module.rsplit('.', 1)[1]}`" in text, f"built-in plugin {module} is not named"
    assert "hooks only gain arguments" in text.lower()


def test_option_errors_quoted_in_the_doc_are_the_real_messages():
    """The three example errors are produced by the real rtn options, word for word."""
    from teeny_core.builtin.rtn import RTNOptions
    from teeny_core.options import OptionsError

    text = doc_text()
    for values in ({"bogus": 1}, {"bits": 9}, {"group_size": 0}):
        with pytest.raises(OptionsError) as err:
            RTNOptions.from_mapping(values, where="rtn")
        assert f"`{err.value}`" in text


def test_plugins_json_keys_and_kinds_are_documented():
    """The `teeny plugins --json` keys are PluginInfo's fields (the CLI leaves out the traceback)."""
    import dataclasses

    from teeny_core.plugins import PluginInfo

    text = doc_text()
    json_paragraph = text.split("`teeny plugins --json`", 1)[1].split("\n\n", 1)[0]
    for field in dataclasses.fields(PluginInfo):
        if field.name == "traceback":  # not a --json key: `teeny plugins --traceback` prints it
            continue
        assert f"`{field.name}`" in json_paragraph, f"--json key {field.name!r} is not documented"
    kinds_line = next(line for line in text.splitlines() if line.startswith("Kinds are "))
    for kind in KINDS:
        assert f"`{kind}`" in kinds_line
