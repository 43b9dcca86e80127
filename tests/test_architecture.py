"""The layout holds: no import cycles between modules, every public name documented."""
import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import transferlab

ROOT = Path(transferlab.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every transferlab module imported anywhere in the file (module level and inside functions)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if not base.startswith("transferlab"):
                continue
            for alias in node.names:  # `from pkg import module` imports the module
                sub = f"{base}.{alias.name}"
                found.add(sub if (ROOT.parent / sub.replace(".", "/")).with_suffix(".py").is_file()
                          or (ROOT.parent / sub.replace(".", "/")).is_dir() else base)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("transferlab")}
    return found - {name}


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    # importing a package's __init__ that re-exports nothing is no dependency; ignore bare packages
    return {name: {m for m in _imports(path) if m in modules and not modules[m].name == "__init__.py"}
            for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_import_graph_walker_sees_real_edges():
    graph = _graph()
    assert "transferlab.training.trainer" in graph["transferlab.api"]  # an import inside a function
    assert "transferlab.core.errors" in graph["transferlab.training.trainer"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    assert _cycles(_graph()) == []


LAYERS = ["core", "data", "models", "inference", "runs", "training", "advice", "serve"]


def test_lower_layers_never_import_higher_ones():
    graph = _graph()
    bad = []
    for name, deps in graph.items():
        parts = name.split(".")
        if len(parts) < 3 or parts[1] not in LAYERS:
            continue
        for dep in deps:
            dep_layer = dep.split(".")[1] if dep.count(".") >= 1 else ""
            if dep_layer in LAYERS and LAYERS.index(dep_layer) > LAYERS.index(parts[1]):
                bad.append(f"{name} -> {dep}")
    assert bad == []


def _public_members():
    for info in pkgutil.walk_packages(transferlab.__path__, "transferlab."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                continue
            if inspect.isclass(obj) or inspect.isfunction(obj):
                yield f"{info.name}.{name}", obj
                if inspect.isclass(obj):
                    for attr, member in vars(obj).items():
                        if not attr.startswith("_") and (inspect.isfunction(member) or isinstance(member, property)):
                            yield f"{info.name}.{name}.{attr}", member


def test_every_public_class_and_function_has_a_docstring():
    missing = [name for name, obj in _public_members()
               if not (obj.fget.__doc__ if isinstance(obj, property) else obj.__doc__)]
    assert missing == []
