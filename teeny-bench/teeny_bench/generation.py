"""Turning a model's text into a Python program: prompts, stop strings, chat-mode code extraction.

Completion mode (base models): the prompt is the function signature and docstring; the model writes the body,
cut at the first stop string (a new top-level statement). Chat mode (instruct models): the prompt asks, through
the tokenizer's chat template, for the complete function in a fenced code block; the first block (preferring
one that defines the entry point) is extracted, and top-level demo code (``print(...)``, ``if __name__ ==
"__main__":``, asserts) is dropped so only definitions reach the tests.
"""

from __future__ import annotations

import ast
import dataclasses
import re
import textwrap
from typing import Any

from teeny_core import Options, TeenyError, option

STOP_STRINGS = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#")
CHAT_INSTRUCTION = ("Complete the following Python function. Reply with the complete function, including its "
                    "signature and any imports it needs, in a single ```python code block.")
_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:\n```|\Z)", re.S)


@dataclasses.dataclass
class SamplingOptions(Options):
    """The generation options every code benchmark shares (its own options follow them)."""

    n: int = option(1, "samples per problem (pass@k for each k up to n)", min=1, max=1000)
    temperature: float = option(0.0, "sampling temperature; 0 is greedy (then n must be 1)", min=0.0, max=5.0)
    top_p: float = option(0.95, "nucleus sampling p (when temperature > 0)", min=0.0, max=1.0)
    max_new_tokens: int = option(512, "generation budget per sample", min=1)
    batch_size: int = option(8, "prompts per generate() call", min=1)
    workers: int = option(0, "parallel sandboxes (0: one per CPU core)", min=0)

    def check_sampling(self, where: str) -> None:
        """Several greedy samples would be identical: refuse ``n > 1`` at temperature 0."""
        if self.n > 1 and self.temperature == 0:
            raise TeenyError(f"{where}: n={self.n} samples need temperature > 0 (greedy samples are identical); "
                             "set temperature, e.g. 0.8, or n=1")


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def resolve_style(style: str, tokenizer: Any, where: str) -> str:
    """``"auto"`` -> ``"chat"`` when the tokenizer has a chat template, else ``"completion"``."""
    if style == "auto":
        return "chat" if has_chat_template(tokenizer) else "completion"
    if style == "chat" and not has_chat_template(tokenizer):
        raise TeenyError(f"{where}: prompt_style=chat but the model's tokenizer has no chat template; "
                         "use prompt_style=completion")
    return style


def chat_prompt(tokenizer: Any, problem_prompt: str) -> str:
    """The problem wrapped in the model's chat template, ready for generation."""
    message = f"{CHAT_INSTRUCTION}\n\n```python\n{problem_prompt.rstrip()}\n```"
    return tokenizer.apply_chat_template([{"role": "user", "content": message}], tokenize=False,
                                         add_generation_prompt=True)


def truncate_at_stop(text: str, stops: tuple[str, ...] | list[str] = STOP_STRINGS) -> str:
    """``text`` up to (not including) the earliest stop string."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=len(text))
    return text[:cut]


def extract_code(text: str, entry_point: str | None = None) -> str:
    """The code in a chat answer: the first fenced block defining ``entry_point`` (else the first Python or
    untagged block; an unclosed final block counts), or the whole text when there is no fence."""
    blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(text)]
    if not blocks:
        return text.strip("\n")
    if entry_point:
        for _, body in blocks:
            if re.search(rf"^\s*(?:async\s+)?def\s+{re.escape(entry_point)}\s*\(", body, re.M):
                return body
    for lang, body in blocks:
        if lang in ("python", "py", "python3", ""):
            return body
    return blocks[0][1]


def keep_definitions(code: str) -> str:
    """Drop top-level statements that are not imports, definitions or assignments (demo prints, asserts,
    ``if __name__ == "__main__":`` blocks). Code that does not parse is returned unchanged."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return code
    keep = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Assign,
            ast.AnnAssign)
    lines = code.splitlines()
    out = []
    for node in tree.body:
        if isinstance(node, keep):
            start = min([d.lineno for d in getattr(node, "decorator_list", [])] + [node.lineno])
            out.append("\n".join(lines[start - 1:node.end_lineno]))
    return "\n\n".join(out) + "\n" if out else ""


def _definition(name: str) -> re.Pattern:
    """A top-level ``def name(`` or ``class name`` line."""
    return re.compile(rf"^(?:(?:async\s+)?def\s+{re.escape(name)}\s*\(|class\s+{re.escape(name)}\b)", re.M)


def defines(code: str, name: str) -> bool:
    """Whether ``code`` defines function or class ``name`` at top level."""
    return _definition(name).search(code) is not None


def last_definition(code: str) -> str | None:
    """The name of the last top-level function or class ``code`` defines (a prompt's entry point)."""
    names = re.findall(r"^(?:(?:async\s+)?def|class)\s+(\w+)", code, re.M)
    return names[-1] if names else None


def chat_completion(text: str, entry_point: str) -> str:
    """The code to test from a chat answer: the extracted block without demo code."""
    code = extract_code(text, entry_point)
    return keep_definitions(code) if defines(code, entry_point) else code


def solution_program(prompt: str, completion: str, entry_point: str) -> str:
    """The solution source: the prompt followed by the completion (a body), or, when the completion defines
    the entry point itself (chat mode), the prompt (for its imports and helpers) then the full function or
    class. A prompt that is only a stub (a LeetCode ``class Solution`` whose method has no body yet) is cut
    before the entry point's definition, so the answer's class replaces it."""
    if defines(completion, entry_point):
        head = prompt
        if not _parses(prompt):
            match = _definition(entry_point).search(prompt)
            head = prompt[:match.start()] if match else prompt
        return f"{head.rstrip()}\n\n\n{completion.strip(chr(10))}\n"
    body = completion.strip("\n")
    continues_line = not prompt.endswith("\n")  # the prompt ends inside a line (a stub's indentation)
    stub_indent = prompt[prompt.rfind("\n") + 1:]
    if body and continues_line and not stub_indent.strip() and body.startswith((" ", "\t")):
        # the answer brings its own indentation (after a newline or not): its block replaces the stub's last line,
        # re-indented to the method body's level when it chose another one
        if not body.startswith(stub_indent) or body[len(stub_indent):][:1] in (" ", "\t"):
            body = textwrap.indent(textwrap.dedent(body), stub_indent)
        return prompt[:len(prompt) - len(stub_indent)] + body + "\n"
    if body and not continues_line and not body.startswith((" ", "\t")):  # a body answered without indentation
        completion = "\n".join("    " + line if line.strip() else line for line in body.splitlines()) + "\n"
    return prompt + completion


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
    except SyntaxError:
        return False
    return True
