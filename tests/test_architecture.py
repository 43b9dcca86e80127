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


# Each package (or top-level module) imports only those before it. deploy (ONNX export, engines,
# quantization) sits under inference, whose Classifier runs its engines; auditing under tasks, whose
# leakage check is its near-duplicate rule; detect (BlazeFace) on the engine, under tasks, which
# trains it; advice on tasks; then the front doors: api, serve (over api), cli (over both).
LAYERS = ["core", "data", "models", "deploy", "inference", "runs", "training", "auditing", "detect", "tasks", "advice",
          "api", "serve", "cli", "__main__"]


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_package_has_a_layer():
    assert {_layer(m) for m in _graph()} - {""} - set(LAYERS) == set()


def test_lower_layers_never_import_higher_ones():
    bad = [f"{name} -> {dep}" for name, deps in _graph().items() if _layer(name) in LAYERS
           for dep in deps if _layer(dep) in LAYERS and LAYERS.index(_layer(dep)) > LAYERS.index(_layer(name))]
    assert bad == []


def _vocabularies() -> dict[str, set[str]]:
    """Every choice list in core/options.py, and the detector names of detect.model's registry."""
    from transferlab.core import options
    from transferlab.detect.model import CONFIGS

    found = {name: set(value) for name, value in vars(options).items()
             if isinstance(value, tuple) and len(value) > 1 and all(isinstance(v, str) for v in value)}
    return {**found, "detect.model.CONFIGS": set(CONFIGS)}


def _string_literals(node) -> set[str] | None:
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and node.elts and all(
            isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts):
        return {e.value for e in node.elts}
    return None


def test_every_vocabulary_is_spelled_only_in_its_home():
    """A list of choices that holds all of a vocabulary, or an argparse choices= literal, outside
    core/options.py (or detect/model.py for detector names) is a second copy: import the vocabulary."""
    vocab = _vocabularies()
    homes = {ROOT / "core" / "options.py", ROOT / "detect" / "model.py"}
    bad = []
    for path in sorted(ROOT.rglob("*.py")):
        if path in homes:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            where = f"{path.relative_to(ROOT.parent)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.keyword) and node.arg == "choices" and isinstance(
                    node.value, (ast.Tuple, ast.List, ast.Set)):
                bad.append(f"{where}: choices= spelled out")
            items = _string_literals(node)
            if items:
                bad += [f"{where}: {name} spelled out" for name, words in vocab.items() if words <= items]
    assert bad == []


def test_the_vocabulary_check_sees_a_copy(tmp_path):
    tree = ast.parse('p.add_argument("--b", choices=["auto", "torch"])\nX = ("int8", "fp16")')
    assert any(isinstance(n, ast.keyword) and n.arg == "choices" for n in ast.walk(tree))
    assert any(_string_literals(n) == {"int8", "fp16"} for n in ast.walk(tree))


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
    # inspect.getdoc: an override is documented by the method it overrides (a Task's hooks by tasks.base.Task)
    missing = [name for name, obj in _public_members() if not inspect.getdoc(obj)]
    assert missing == []
