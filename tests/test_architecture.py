"""The codebase's shape, checked from the source text (no imports of the package).

- no function in ``mura_ens/`` longer than 80 lines;
- no public function or method with more than 8 parameters (settings objects instead);
- no import circle between modules of ``mura_ens/`` (module-level and lazy imports alike);
- the two hard boundaries: nothing outside ``mura_ens/training/`` imports TensorFlow,
  Keras or tf2onnx, and nothing in ``mura_ens/`` imports a plugin distribution by name.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mura_ens"
PLUGINS = Path(__file__).resolve().parents[1] / "plugins"

MAX_FUNCTION_LINES = 80
MAX_PUBLIC_PARAMS = 8
TF_MODULES = ("tensorflow", "keras", "tf2onnx", "tf_keras")


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def _is_cli(module: str) -> bool:
    return module.startswith("mura_ens.cli")


def test_no_function_longer_than_80_lines():
    long = []
    for module, path in _modules().items():
        for fn in _functions(_tree(path)):
            first = min([fn.lineno] + [d.lineno for d in fn.decorator_list])
            length = fn.end_lineno - first + 1
            if length > MAX_FUNCTION_LINES:
                long.append(f"{module}.{fn.name}: {length} lines")
    assert not long, "functions over 80 lines:\n" + "\n".join(long)


def _n_params(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    a = fn.args
    names = [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs]
    return len([n for n in names if n not in ("self", "cls")])


def test_public_functions_take_at_most_8_parameters():
    wide = []
    for module, path in _modules().items():
        if _is_cli(module):
            continue  # Typer commands: their options are their parameters
        for fn in _functions(_tree(path)):
            if fn.name.startswith("_"):
                continue
            if _n_params(fn) > MAX_PUBLIC_PARAMS:
                wide.append(f"{module}.{fn.name}: {_n_params(fn)} parameters")
    assert not wide, "public functions with more than 8 parameters:\n" + "\n".join(wide)


def _imports(module: str, path: Path, known: set[str]) -> set[str]:
    """Modules of mura_ens imported anywhere in ``path`` (resolved to known module names)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(_tree(path)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            names = [prefix] + [f"{prefix}.{a.name}" for a in node.names]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module and name.startswith("mura_ens"):
                found.add(name)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    graph = {}
    for module, path in modules.items():
        # a package's __init__ re-exporting its children is not a dependency of the children
        deps = _imports(module, path, known)
        graph[module] = {d for d in deps if not module.startswith(d + ".")}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circle_inside_the_package():
    cycles = _cycles(_graph())
    assert not cycles, "import circles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_cycle_finder_finds_a_planted_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def _absolute_imports(path: Path) -> list[str]:
    """Every module named by an absolute import statement in ``path`` (``import x.y``, ``from x.y import z``)."""
    names: list[str] = []
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names.append(node.module or "")
    return names


def test_tensorflow_is_imported_only_under_training():
    offenders = []
    for module, path in _modules().items():
        if module.startswith("mura_ens.training"):
            continue
        offenders += [f"{module} imports {n}" for n in _absolute_imports(path) if n.split(".")[0] in TF_MODULES]
    assert not offenders, "\n".join(offenders)


def test_core_never_imports_a_plugin_by_name():
    plugin_modules = {p.stem for p in PLUGINS.glob("*/*.py")}
    assert plugin_modules, "no plugin modules found under plugins/"
    offenders = []
    for module, path in _modules().items():
        offenders += [f"{module} imports {n}" for n in _absolute_imports(path) if n.split(".")[0] in plugin_modules]
    assert not offenders, "\n".join(offenders)
