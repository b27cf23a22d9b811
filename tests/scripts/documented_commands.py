"""Extract the commands the documentation shows: README (and docs/) code blocks and inline commands, and the
examples in the module docstrings (``--help`` text) of the command-line scripts."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Documents whose commands a user copies: the README and the scripts' module docstrings (their --help text).
DOCSTRING_SCRIPTS = ("inference_hf.py", "train_lora_otf.py", "prepare_data.py", "dataset.py", "evaluate.py",
                     "scripts/make_sample_data.py", "scripts/make_benchmark.py", "scripts/run_benchmark.py",
                     "scripts/compare_recipes.py", "scripts/plot_run.py", "scripts/reproduce.py")
# Further documents under docs/ whose code blocks a user copies (same rules as the README's).
DOCS = ("docs/training_recipe.md", "docs/conventions.md")
_STARTS = ("python ", "python3", "make ", "accelerate launch ", "pip ", "conda ", ".venv/")
_INLINE = re.compile(r"`{1,2}((?:python|make|pip|accelerate) [^`]+)`{1,2}")


def _strip_comment(line: str) -> str:
    # A shell comment starts with '#' after whitespace, outside quotes (the commands here quote no '#').
    return re.split(r"(?:^|\s)#", line, maxsplit=1)[0].rstrip()


def _block_commands(lines: list[str]) -> list[str]:
    commands, current = [], ""
    for raw in lines:
        line = _strip_comment(raw.strip())
        if not line and not current:
            continue
        current = f"{current} {line}".strip() if current else line
        if current.endswith("\\"):
            current = current[:-1].rstrip()
            continue
        if current.startswith(_STARTS) and current.strip() not in ("accelerate launch",):
            commands.append(" ".join(current.split()))
        current = ""
    return commands


def readme_commands(text: str | None = None) -> list[str]:
    text = (REPO / "README.md").read_text() if text is None else text
    commands = []
    for block in re.findall(r"```(?:bash|sh)?\n(.*?)```", text, flags=re.S):
        commands += _block_commands(block.splitlines())
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    commands += [" ".join(c.split()) for c in _INLINE.findall(prose.replace("\n", " "))]
    return [c for c in commands if c != "accelerate launch"]  # the launcher named in prose, not a command


def docstring_commands(script: str) -> list[str]:
    doc = ast.get_docstring(ast.parse((REPO / script).read_text())) or ""
    indented = [line for line in doc.splitlines() if line.startswith("    ")]
    commands = _block_commands(indented)
    flat = re.sub(r"\n {4}.*", "", doc)  # inline ``python ...`` spans in the prose
    commands += [" ".join(c.split()) for c in _INLINE.findall(flat.replace("\n", " "))]
    return commands


def all_commands() -> dict[str, list[str]]:
    """``{command: [where it is documented]}``."""
    found: dict[str, list[str]] = {}
    for command in readme_commands():
        found.setdefault(command, []).append("README.md")
    for doc in DOCS:
        for command in readme_commands((REPO / doc).read_text()):
            found.setdefault(command, []).append(doc)
    for script in DOCSTRING_SCRIPTS:
        for command in docstring_commands(script):
            found.setdefault(command, []).append(script)
    return found
