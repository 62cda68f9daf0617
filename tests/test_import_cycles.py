"""The package imports in one direction: no module reaches itself again through the package's own imports (counting
imports inside functions too: a function-local import only hides a cycle), and every import follows the layers."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "contextseg"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports (an import of a package's own parent package is not counted)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {m: set() for m in modules}
    for m, path in modules.items():
        base = m.split(".") if path.name == "__init__.py" else m.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                parent = ".".join(base[: len(base) - node.level + 1] + [node.module or ""]) if node.level \
                    else node.module or ""
                targets = [parent.rstrip(".")] + [f"{parent.rstrip('.')}.{a.name}" for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in modules:
                    t = t.rpartition(".")[0]
                if t and t != m and not m.startswith(t + "."):
                    graph[m].add(t)
    return graph


def reaches(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), list(graph[start])
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(graph[m])
    return seen


def test_no_import_cycles():
    graph = import_graph()
    assert len(graph) > 50
    cyclic = sorted(m for m in graph if m in reaches(graph, m))
    assert not cyclic, f"modules on an import cycle: {cyclic}"


# The layers, lowest first: a module imports only from its own layer or below (docs/architecture.md).
LAYERS = [
    {"errors"},
    {"registry", "config", "cache"},
    {"data", "models", "visualize"},
    {"losses", "metrics", "onnx_graph"},
    {"engine", "export"},
    {"tasks"},
    {"cli", "__main__", "zoo_pack", ""},  # "": the package's own __init__ (the public API)
]


def layer_of(module: str) -> int:
    name = module.split(".")[1] if "." in module else ""
    for i, names in enumerate(LAYERS):
        if name in names:
            return i
    raise AssertionError(f"{module} is in no layer: add contextseg.{name} to LAYERS and docs/architecture.md")


def test_imports_follow_the_layers():
    graph = import_graph()
    upward = sorted(f"{m} -> {t}" for m, targets in graph.items() for t in targets if layer_of(t) > layer_of(m))
    assert not upward, f"imports against the layering (core -> data/models -> losses/metrics -> engine -> tasks -> cli): {upward}"
