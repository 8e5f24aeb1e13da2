"""The package forms layers: a module imports only modules of its own layer or below, and never in a circle.

Imports inside functions count (a lazy import is still a dependency); ``if TYPE_CHECKING:`` ones do not.
A new module must be placed in ``LAYERS`` below, which is the map of the package.
"""

import ast
import subprocess
import sys
from pathlib import Path

import rulebert

PACKAGE = Path(rulebert.__file__).parent
LAYERS = [
    ["_version", "errors", "files", "config"],  # foundations
    ["data", "text", "metrics", "calibrate", "examples", "rules"],  # domain, no torch
    ["integrity", "card", "model", "checkpoints", "backends", "trainer"],  # model files and runtime
    ["report", "train", "predict", "export", "evaluate", "adapt"],  # use cases
    # front ends:
    [
        "http_guard",
        "http_validation",
        "http_schema",
        "serve_state",
        "pipeline",
        "score",
        "score_ray",
        "serve",
        "commands",
        "cli",
    ],
]
LAYER_OF = {name: level for level, names in enumerate(LAYERS) for name in names}


def _under_type_checking(parents: list[ast.AST]) -> bool:
    return any(isinstance(p, ast.If) and "TYPE_CHECKING" in ast.unparse(p.test) for p in parents)


def imports_of(path: Path) -> set[str]:
    """The package's modules that ``path`` imports, anywhere in the file."""
    found: set[str] = set()

    def visit(node: ast.AST, parents: list[ast.AST]) -> None:
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        if not _under_type_checking(parents):
            for name in names:
                parts = name.split(".")
                if parts[0] == "rulebert" and len(parts) > 1 and parts[1] in LAYER_OF:
                    found.add(parts[1])
        for child in ast.iter_child_nodes(node):
            visit(child, [*parents, node])

    visit(ast.parse(path.read_text(encoding="utf-8")), [])
    return found


def graph() -> dict[str, set[str]]:
    return {p.stem: imports_of(p) - {p.stem} for p in PACKAGE.glob("*.py") if p.stem != "__init__"}


def test_every_module_has_a_layer():
    assert sorted(set(graph()) - set(LAYER_OF)) == []


def test_imports_go_down_or_sideways_only():
    upward = [
        f"{module} (layer {LAYER_OF[module]}) imports {target} (layer {LAYER_OF[target]})"
        for module, targets in graph().items()
        for target in targets
        if LAYER_OF[target] > LAYER_OF[module]
    ]
    assert upward == []


def test_no_import_cycles():
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def walk(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(edges.get(module, ())):
            if state.get(target) == 1:
                cycles.append(" -> ".join([*path[path.index(target) :], target]))
            elif target not in state:
                walk(target, [*path, target])
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            walk(module, [module])
    assert cycles == []


def test_domain_layers_do_not_import_torch():
    """data, text, metrics, calibrate (and the foundations) run where torch is not installed."""
    heavy = {"torch", "transformers", "accelerate"}
    for name in LAYERS[0] + LAYERS[1]:
        tree = ast.parse((PACKAGE / f"{name}.py").read_text(encoding="utf-8"))
        imported = {
            (a.name if isinstance(n, ast.Import) else n.module or "").split(".")[0]
            for n in ast.walk(tree)
            if isinstance(n, ast.Import | ast.ImportFrom)
            for a in (n.names if isinstance(n, ast.Import) else [n])
        }
        assert not imported & heavy, f"{name} imports {imported & heavy}"


def test_no_module_over_450_lines():
    long = {
        p.name: n
        for p in PACKAGE.glob("*.py")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > 450
    }
    assert long == {}


def test_server_starts_without_torch():
    """The server with an int8 file serves through onnxruntime alone: importing it must not pull torch or
    transformers (adaptation loads them when a job runs)."""
    probe = "import sys, rulebert.serve; print([m for m in ('torch', 'transformers') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
