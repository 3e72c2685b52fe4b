"""Static checks of the source (ast, no import): pyrovae/ never imports the CLI; no function takes,
and no call passes, more than ``MAX_POSITIONAL`` positional arguments (the rest go by keyword,
after ``*,``); and an import inside a function only defers a heavy optional library."""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"pyrovae": "pyrovae", "cli": "pyrovae.cli"}   # folder -> installed name (cli/ is pyrovae.cli)
MAX_POSITIONAL = 6

# imported inside the functions that need them, so that importing pyrovae does not pay for them:
# matplotlib (half a second), torchvision (1-3 s: it imports torch._dynamo), arviz and
# arviz_stats (PSIS k-hat), tensorboard (--tensorboard only)
DEFERRABLE = ("arviz", "arviz_stats", "matplotlib", "torchvision", "torch.utils.tensorboard", "tensorboard")
# cli/main.py starts every command and imports no torch (tests/cli/test_startup.py): the process
# group of a torchrun launch is joined with an import inside main
STARTUP = {("cli/main.py", "pyrovae.core.distributed")}

Function = ast.FunctionDef | ast.AsyncFunctionDef


def sources() -> Iterator[tuple[str, str, ast.Module]]:
    """(path from the repository root, module name, syntax tree) of every file of pyrovae/ and cli/."""
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            module = ".".join((package, *parts[:-1], *([] if parts[-1] == "__init__" else parts[-1:])))
            yield path.relative_to(ROOT).as_posix(), module, ast.parse(path.read_text(), str(path))


SOURCES = list(sources())


def nodes(tree: ast.AST, scope: str = "", function: str = "") -> Iterator[tuple[str, ast.AST]]:
    """Every node of ``tree`` with the qualified name of the function it is in ("": at module or
    class level); a function's own node is named by itself."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            name = f"{scope}{node.name}"
            inside = function if isinstance(node, ast.ClassDef) else name
            yield inside, node
            yield from nodes(node, f"{name}.", inside)
        else:
            yield function, node
            yield from nodes(node, scope, function)


def functions(tree: ast.AST) -> Iterator[tuple[str, Function]]:
    """(qualified name, node) of every function in ``tree``, methods and nested ones included."""
    return ((name, node) for name, node in nodes(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)))


def positional(function: Function | ast.Lambda) -> int:
    return sum(arg.arg not in ("self", "cls") for arg in function.args.posonlyargs + function.args.args)


def is_click_command(function: Function) -> bool:
    """Decorated by ``click.command``/``click.group`` or a group's ``.command``: click passes keywords."""
    for decorator in function.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        if isinstance(target, ast.Attribute) and target.attr in ("command", "group"):
            return True
    return False


def callee(call: ast.Call) -> str:
    return call.func.attr if isinstance(call.func, ast.Attribute) else ast.unparse(call.func)


def imported(node: ast.Import | ast.ImportFrom, module: str) -> list[str]:
    """The absolute names an import statement in ``module`` imports (``from a import b``: ``a.b``,
    which is a module or a name in one)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    parts = module.split(".") + ([""] if module in PACKAGE_NAMES else [])   # a package is its own __init__
    base = ".".join([*parts[:len(parts) - node.level], *([node.module] if node.module else [])]) \
        if node.level else node.module
    return [base if alias.name == "*" else f"{base}.{alias.name}" for alias in node.names]


PACKAGE_NAMES = {module for path, module, _ in SOURCES if path.endswith("__init__.py")}


def test_the_library_never_imports_the_cli():
    found = [(path, name) for path, module, tree in SOURCES if not module.startswith("pyrovae.cli")
             for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
             for name in imported(node, module) if name == "pyrovae.cli" or name.startswith("pyrovae.cli.")]
    assert not found, found


def test_no_function_takes_more_than_six_positional_parameters():
    found = {(path, name) for path, _, tree in SOURCES for name, function in functions(tree)
             if positional(function) > MAX_POSITIONAL and not is_click_command(function)}
    assert not sorted(found)


def test_no_call_passes_more_than_six_positional_arguments():
    # a function of *args takes any number (contract._table(*hooks)): not counted are the calls of a
    # name that its own file defines with *args, or that every definition here gives *args
    defined = [(path, function) for path, _, tree in SOURCES for _, function in functions(tree)]
    variadic = {(path, f.name) for path, f in defined if f.args.vararg is not None and positional(f) <= MAX_POSITIONAL}
    anywhere = {name for _, name in variadic} - {f.name for _, f in defined if f.args.vararg is None}
    found = {(path, name, callee(node)) for path, _, tree in SOURCES for name, node in nodes(tree)
             if isinstance(node, ast.Call) and len(node.args) > MAX_POSITIONAL
             and (path, callee(node)) not in variadic and callee(node) not in anywhere}
    assert not sorted(found)


def test_imports_inside_functions_only_defer_heavy_optional_libraries():
    found = {(path, name, imported_name) for path, module, tree in SOURCES for name, node in nodes(tree)
             if name and isinstance(node, (ast.Import, ast.ImportFrom))
             for imported_name in imported(node, module)
             if not any(imported_name == lib or imported_name.startswith(lib + ".") for lib in DEFERRABLE)
             and (path, imported_name) not in STARTUP}
    assert not sorted(found)


@pytest.mark.parametrize("source, offenders", [
    ("def f(a, b, c, d, e, f, g): pass", 1),
    ("def f(self, a, b, c, d, e, f, *, g): pass", 0),
    ("@click.command()\ndef f(a, b, c, d, e, f, g): pass", 0),
    ("@cli.command('x')\ndef f(a, b, c, d, e, f, g): pass", 0),
])
def test_the_parameter_count_sees_what_it_should(source, offenders):
    tree = ast.parse(source)
    assert sum(positional(f) > MAX_POSITIONAL and not is_click_command(f) for _, f in functions(tree)) == offenders


def test_relative_imports_resolve_to_absolute_names():
    def names(statement: str, module: str) -> list[str]:
        return imported(ast.parse(statement).body[0], module)

    assert names("from ..core import errors", "pyrovae.pictures.plots") == ["pyrovae.core.errors"]
    assert names("from .errors import X, Y", "pyrovae.core") == ["pyrovae.core.errors.X", "pyrovae.core.errors.Y"]
    assert names("from . import cli", "pyrovae") == ["pyrovae.cli"]
    assert names("import torch.utils.tensorboard as tb", "pyrovae.workflows.fitting") == ["torch.utils.tensorboard"]
