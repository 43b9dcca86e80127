"""MkDocs hook: the pages generated from the code at every build, so they cannot drift from it.

- reference/cli.md: the help of every command and sub-command, rendered by the real argument parser
  (transferlab.cli.main.build_parser); a command added to the CLI appears here without an edit.
- reference/errors.md: every one-line error the tool can print (each `raise` of a TransferlabError or
  one of its subclasses under src/transferlab), with the module that raises it.

mkdocs.yml names this file under `hooks:`; tests/test_docs.py imports it to check the CLI reference
covers every sub-command.
"""
from __future__ import annotations

import argparse
import ast
import functools
import html
import inspect
from collections.abc import Iterator
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "transferlab"
WIDTH = 100  # help text wrapped at a fixed width, whatever the terminal the build runs in


def build_parser() -> argparse.ArgumentParser:
    from transferlab.cli.main import build_parser as build

    return build()


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def commands(parser: argparse.ArgumentParser | None = None,
             path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every command of the parser as (words after `transferlab`, its parser), depth first: ("train",),
    ("detect",), ("detect", "predict"), ..."""
    parser = parser or build_parser()
    for name, sub in _subparsers(parser).items():
        yield path + (name,), sub
        yield from commands(sub, path + (name,))


def _help(parser: argparse.ArgumentParser) -> str:
    parser.formatter_class = functools.partial(parser.formatter_class, width=WIDTH)
    return parser.format_help().rstrip()


def anchor(path: tuple[str, ...]) -> str:
    """The heading id of a command's section: `transferlab-detect-train`."""
    return "-".join(("transferlab",) + path)


def render_cli(parser: argparse.ArgumentParser | None = None) -> str:
    """The CLI reference page, in Markdown."""
    parser = parser or build_parser()
    help_of = {name: sub for name, sub in _subparsers(parser).items()}
    lines = ["# Command-line reference", "",
             "Generated at every build from the argument parser itself (`transferlab.cli.main.build_parser`), "
             "so it is exactly what `transferlab COMMAND --help` prints. Every command takes `--help`.", "",
             "| command | what it does |", "|---|---|"]
    summaries = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            summaries = {a.dest: a.help for a in action._choices_actions}
    for name in help_of:
        lines.append(f"| [`transferlab {name}`](#{anchor((name,))}) | {summaries.get(name) or ''} |")
    lines += ["", "## transferlab", "", "```text", _help(parser), "```", ""]
    for path, sub in commands(parser):
        level = "#" * (len(path) + 1)
        lines += [f"{level} transferlab {' '.join(path)} {{#{anchor(path)}}}", "", "```text", _help(sub), "```", ""]
    return "\n".join(lines)


def _error_classes() -> set[str]:
    from transferlab.core import errors

    return {name for name, obj in vars(errors).items()
            if inspect.isclass(obj) and issubclass(obj, errors.TransferlabError)}


def _template(node: ast.AST) -> str:
    """A message as its source writes it, with each interpolated value shown as {expression}."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "{" + ast.unparse(v.value) + "}"
                       for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _template(node.left) + _template(node.right)
    return "{" + ast.unparse(node) + "}"


def error_messages(src: Path = SRC) -> list[tuple[str, str, str]]:
    """(module, error class, message template) of every `raise SomeTransferlabError(...)` in the package."""
    classes = _error_classes()
    found = []
    for file in sorted(src.rglob("*.py")):
        module = file.relative_to(src.parent).with_suffix("").as_posix().replace("/", ".")
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
                func = node.exc.func
                name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
                if name in classes:
                    message = _template(node.exc.args[0]) if node.exc.args else ""
                    found.append((module, name, message, node.lineno))
    return [(m, c, t) for m, c, t, _ in sorted(found, key=lambda f: (f[0], f[3]))]


def render_errors() -> str:
    """The page of every error message, grouped by module."""
    lines = ["# Every error message", "",
             "Generated at every build from the source: each `raise` of `TransferlabError` or one of its "
             "subclasses. The command line prints the message as one line, `transferlab: error: MESSAGE`, and "
             "exits with code 2. `{...}` stands for a value filled in at run time (a path, a number, a list of "
             "choices). What to do about the common ones is in [Troubleshooting](../troubleshooting.md).", ""]
    module = None
    for mod, cls, message in error_messages():
        if mod != module:
            module = mod
            lines += ["", f"## `{mod}`", "", "| error | message |", "|---|---|"]
        text = html.escape(" ".join(message.split()))
        for char, entity in (("|", "&#124;"), ("[", "&#91;"), ("]", "&#93;"), ("`", "&#96;"), ("*", "&#42;"),
                             ("_", "&#95;")):
            text = text.replace(char, entity)  # literal text: no table cell, link or emphasis markup
        lines.append(f"| {cls} | <code>{text}</code> |")
    return "\n".join(lines) + "\n"


def on_files(files, config):
    """MkDocs event: add the generated pages to the site."""
    from mkdocs.structure.files import File

    files.append(File.generated(config, "reference/cli.md", content=render_cli()))
    files.append(File.generated(config, "reference/errors.md", content=render_errors()))
    return files
