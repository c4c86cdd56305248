"""The shape of the eye_model package: module size, no import cycle, one home for setting names.

Each rule is checked on the real package, and the checker itself on small
packages written to a temporary folder, so a checker that can no longer find
a problem fails too.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[2] / "eye_model"
#: Most lines a module of eye_model may have.
MAX_MODULE_LINES = 700
#: Prefix of eye-model's own environment variables.
SETTING_PREFIX = "EYE_MODEL_"
#: Modules that may spell a setting's variable name: the settings table and the CLI's help.
#: The modules that may spell setting names: settings, and the command line (help texts).
SETTING_NAME_MODULES = frozenset(
    {
        "eye_model.settings",
        "eye_model.cli",
        "eye_model.cli_options",
        "eye_model.cli_stack",
        "eye_model.cli_lifecycle",
    }
)


def find_modules(root: Path) -> dict[str, Path]:
    """Dotted name → file of every module of the package at ``root`` (``pkg/__init__.py`` → pkg)."""
    modules: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The module of ``modules`` that ``name`` (a dotted import path) loads: its longest prefix."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def imported_modules(module: str, modules: dict[str, Path]) -> set[str]:
    """Modules of ``modules`` that ``module`` imports, anywhere in its code (functions too).

    ``from a.b import c`` counts as an import of ``a.b.c`` when that is a module
    (a submodule of the package ``a.b``), else of ``a.b``. Relative imports are
    resolved against the module's package.
    """
    path = modules[module]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if _is_package(path) else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _resolve(alias.name, modules)
                if target:
                    found.add(target)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                target = submodule if submodule in modules else _resolve(source, modules)
                if target:
                    found.add(target)
    found.discard(module)
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module → the modules of the same package it imports."""
    modules = find_modules(root)
    return {module: imported_modules(module, modules) for module in modules}


def _strongly_connected(graph: dict[str, set[str]]) -> Iterator[list[str]]:
    """Tarjan's strongly connected components of ``graph``, each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()

    def visit(node: str) -> Iterator[list[str]]:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                yield from visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            yield sorted(component)

    for node in sorted(graph):
        if node not in index:
            yield from visit(node)


def _cycle_through(start: str, members: set[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest import path from ``start`` back to itself inside one component."""
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for node in frontier:
            for target in sorted(graph[node] & members):
                if target == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if target not in previous:
                    previous[target] = node
                    following.append(target)
        frontier = following
    raise AssertionError(f"{start} is on no cycle")  # a component of 2+ always has one


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One import cycle per group of modules that import each other, e.g. [a, b, a]."""
    return [
        _cycle_through(component[0], set(component), graph)
        for component in _strongly_connected(graph)
        if len(component) > 1
    ]


def _docstring_nodes(tree: ast.Module) -> set[int]:
    """ids of the string constants that are docstrings (documentation, not values)."""
    owners = [tree] + [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
    ]
    found: set[int] = set()
    for owner in owners:
        body = owner.body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            found.add(id(body[0].value))
    return found


def modules_spelling(text: str, root: Path) -> dict[str, list[int]]:
    """Module → lines of string literals (docstrings aside) that contain ``text``."""
    result: dict[str, list[int]] = {}
    for module, path in find_modules(root).items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        docstrings = _docstring_nodes(tree)
        lines = sorted(
            {
                node.lineno
                for node in ast.walk(tree)
                if isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and text in node.value
                and id(node) not in docstrings
            }
        )
        if lines:
            result[module] = lines
    return result


def oversized_modules(root: Path, limit: int) -> dict[str, int]:
    """Module → line count, for modules longer than ``limit`` lines."""
    sizes = {
        module: len(path.read_text(encoding="utf-8").splitlines())
        for module, path in find_modules(root).items()
    }
    return {module: size for module, size in sizes.items() if size > limit}


# --------------------------------------------------------------------------
# the rules, on eye_model


def test_no_module_is_over_700_lines() -> None:
    too_long = oversized_modules(PACKAGE_ROOT, MAX_MODULE_LINES)
    assert not too_long, (
        f"modules over {MAX_MODULE_LINES} lines (split them by responsibility): {too_long}"
    )


def test_modules_do_not_import_each_other_in_a_cycle() -> None:
    cycles = import_cycles(import_graph(PACKAGE_ROOT))
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_setting_names_are_spelled_in_settings_and_cli_only() -> None:
    spelled = modules_spelling(SETTING_PREFIX, PACKAGE_ROOT)
    others = {m: lines for m, lines in spelled.items() if m not in SETTING_NAME_MODULES}
    assert not others, (
        f"{SETTING_PREFIX}* written as a literal outside {sorted(SETTING_NAME_MODULES)} "
        f"(module: lines); use eye_model.settings.env_name / settings_environ: {others}"
    )


@pytest.mark.parametrize(
    ("importer", "imported"),
    [
        ("eye_model.registry", "eye_model.data"),
        ("eye_model.train", "eye_model.data"),
        ("eye_model.data", "eye_model.synthetic"),
        ("eye_model.synthetic", "eye_model.synthetic.dataset"),
    ],
)
def test_the_graph_sees_the_imports_of_eye_model(importer: str, imported: str) -> None:
    assert imported in import_graph(PACKAGE_ROOT)[importer]


def test_registry_train_data_and_synthetic_form_no_cycle() -> None:
    graph = import_graph(PACKAGE_ROOT)
    mine = ("eye_model.registry", "eye_model.train", "eye_model.data", "eye_model.synthetic")
    tangled = [c for c in import_cycles(graph) if any(m.startswith(mine) for m in c)]
    assert not tangled
    synthetic = [m for m in graph if m.startswith("eye_model.synthetic")]
    assert len(synthetic) > 1
    for module in synthetic:  # the generator stands alone: no training, no data loading
        assert not {"eye_model.data", "eye_model.train"} & graph[module], module


# --------------------------------------------------------------------------
# the checker, on small packages


def _write_package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root / "pkg"


def test_a_cycle_through_a_function_level_import_is_found(tmp_path: Path) -> None:
    package = _write_package(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/registry.py": "def gate():\n    from pkg.train import prepare\n",
            "pkg/train.py": "from pkg import helpers\n",
            "pkg/helpers.py": "import pkg.registry\n",
            "pkg/alone.py": "import os\nfrom pkg.helpers import x\n",
        },
    )
    assert import_cycles(import_graph(package)) == [
        ["pkg.helpers", "pkg.registry", "pkg.train", "pkg.helpers"]
    ]


def test_from_package_import_submodule_reaches_the_submodule(tmp_path: Path) -> None:
    package = _write_package(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/data.py": "from pkg.synthetic import generate, params\n",
            "pkg/synthetic/__init__.py": "from .dataset import generate\n",
            "pkg/synthetic/dataset.py": "from . import params\nfrom ..data import load\n",
            "pkg/synthetic/params.py": "",
        },
    )
    graph = import_graph(package)
    assert graph["pkg.data"] == {"pkg.synthetic", "pkg.synthetic.params"}
    assert graph["pkg.synthetic"] == {"pkg.synthetic.dataset"}
    assert graph["pkg.synthetic.dataset"] == {"pkg.synthetic.params", "pkg.data"}
    assert import_cycles(graph) == [
        ["pkg.data", "pkg.synthetic", "pkg.synthetic.dataset", "pkg.data"]
    ]


def test_setting_names_in_code_are_found_and_docstrings_are_not(tmp_path: Path) -> None:
    package = _write_package(
        tmp_path,
        {
            "pkg/__init__.py": '"""Reads EYE_MODEL_HOME."""\n',
            "pkg/a.py": 'def f():\n    """Uses ``EYE_MODEL_X``."""\n    return "EYE_MODEL_X"\n',
            "pkg/b.py": 'name = "x"\nmessage = f"set EYE_MODEL_Y to {name}"\n',
        },
    )
    assert modules_spelling("EYE_MODEL_", package) == {"pkg.a": [3], "pkg.b": [2]}


def test_long_modules_are_found(tmp_path: Path) -> None:
    package = _write_package(
        tmp_path, {"pkg/__init__.py": "", "pkg/long.py": "x = 1\n" * 11, "pkg/ok.py": "x = 1\n"}
    )
    assert oversized_modules(package, 10) == {"pkg.long": 11}
