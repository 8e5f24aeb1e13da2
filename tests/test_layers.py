"""The package forms layers: a module imports only modules of its own layer or below, and never in a circle.

Imports inside functions count (a lazy import is still a dependency); ``if TYPE_CHECKING:`` ones do not. So
does a call ``importlib.import_module("rulebert.x")`` / ``import_module(...)`` / ``__import__(...)`` with a
literal rulebert name: an import by string is still an import.
A new module must be placed in ``LAYERS`` below, which is the map of the package.
"""

import ast
import subprocess
import sys
from pathlib import Path

import rulebert

PACKAGE = Path(rulebert.__file__).parent
# Each entry is a subpackage (or a module at the package root); a unit imports only units of its own layer or
# below, and units never import each other in a circle.
LAYERS = [
    ["_version", "core"],  # foundations: errors, files, config
    ["domain"],  # data, text, metrics, calibration, examples, rules: no torch
    ["model", "backend"],  # model files (format, backbones, integrity, card, report); runtime and export
    ["training", "evaluation", "inference"],  # use cases
    ["pipeline", "scoring", "server", "cli"],  # front ends
]
LAYER_OF = {name: level for level, names in enumerate(LAYERS) for name in names}
MAX_ROOT_MODULES = 8


def unit_of(module: str) -> str:
    """``training.train`` -> ``training``; a root module is its own unit."""
    return module.split(".")[0]


def _under_type_checking(parents: list[ast.AST]) -> bool:
    return any(isinstance(p, ast.If) and "TYPE_CHECKING" in ast.unparse(p.test) for p in parents)


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name below ``rulebert`` (``training.train``), no ``__init__``
    of the root (the public API, which imports lazily by name)."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts == ("__init__",):
            continue
        if parts[-1] in ("__init__", "__main__"):
            parts = parts[:-1] + (() if parts[-1] == "__init__" else ("__main__",))
        found[".".join(parts)] = path
    return found


IMPORT_CALLS = ("import_module", "__import__")


def imported_by_call(node: ast.AST) -> str | None:
    """The module that ``importlib.import_module("x")``, ``import_module("x")`` or ``__import__("x")``
    imports, when the call names it with a literal string; else None."""
    if not isinstance(node, ast.Call):
        return None
    func = node.func
    called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    first = node.args[0] if node.args else next((k.value for k in node.keywords if k.arg == "name"), None)
    if called in IMPORT_CALLS and isinstance(first, ast.Constant) and isinstance(first.value, str):
        return first.value
    return None


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``path`` imports, anywhere in the file (a lazy import is still one, and so
    is an import by a literal name: ``importlib.import_module("rulebert.pipeline")``)."""
    found: set[str] = set()

    def visit(node: ast.AST, parents: list[ast.AST]) -> None:
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif (by_name := imported_by_call(node)) is not None:
            names = [by_name]
        if not _under_type_checking(parents):
            for name in names:
                parts = name.split(".")
                if parts[0] == "rulebert":
                    dotted = ".".join(parts[1:])
                    if dotted in known:
                        found.add(dotted)
        for child in ast.iter_child_nodes(node):
            visit(child, [*parents, node])

    visit(ast.parse(path.read_text(encoding="utf-8")), [])
    return found


def graph() -> dict[str, set[str]]:
    known = set(modules())
    return {name: imports_of(path, known) - {name} for name, path in modules().items()}


def test_every_module_has_a_layer():
    assert sorted({unit_of(m) for m in graph()} - set(LAYER_OF)) == []


def upward_imports(edges: dict[str, set[str]]) -> list[str]:
    """Each import of a module from a higher layer, as one line."""
    return [
        f"{module} (layer {LAYER_OF[unit_of(module)]}) imports {target} (layer {LAYER_OF[unit_of(target)]})"
        for module, targets in sorted(edges.items())
        for target in sorted(targets)
        if LAYER_OF[unit_of(target)] > LAYER_OF[unit_of(module)]
    ]


def test_imports_go_down_or_sideways_only():
    assert upward_imports(graph()) == []


def _cycles(edges: dict[str, set[str]]) -> list[str]:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def walk(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                cycles.append(" -> ".join([*path[path.index(target) :], target]))
            elif target not in state:
                walk(target, [*path, target])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            walk(node, [node])
    return cycles


def test_no_import_cycles_between_modules():
    assert _cycles(graph()) == []


def test_no_import_cycles_between_subpackages():
    """Sideways imports inside a layer go one way only (evaluation uses training, never the reverse)."""
    units: dict[str, set[str]] = {}
    for module, targets in graph().items():
        units.setdefault(unit_of(module), set()).update(unit_of(t) for t in targets)
    assert _cycles({unit: targets - {unit} for unit, targets in units.items()}) == []


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a -> b -> c -> a"]


# The shim inference/predict.py once ended in: the submission writer's old names, resolved from the front end.
IMPORT_BY_NAME_SHIM = """
def __getattr__(name):
    if name in ("predict_file", "check_submission"):
        import importlib

        return getattr(importlib.import_module("rulebert.pipeline"), name)
    raise AttributeError(name)


def _more():
    from importlib import import_module

    import_module(name="rulebert.server.app")
    __import__("rulebert.cli")
    import_module("json"), import_module(f"rulebert.{1}"), importlib.import_module(__name__)
"""


def test_the_layer_check_sees_imports_by_a_literal_name(tmp_path):
    """An import by string is an import: the predict.py shim above is an upward import and a circle
    inference <-> pipeline, and the checks catch both (a computed or non-rulebert name is not counted)."""
    source = tmp_path / "predict.py"
    source.write_text(IMPORT_BY_NAME_SHIM, encoding="utf-8")
    found = imports_of(source, set(modules()))
    assert found == {"pipeline", "server.app", "cli"}
    edges = {**graph(), "inference.predict": found}
    assert upward_imports({"inference.predict": found}) == [
        "inference.predict (layer 3) imports cli (layer 4)",
        "inference.predict (layer 3) imports pipeline (layer 4)",
        "inference.predict (layer 3) imports server.app (layer 4)",
    ]
    assert any(
        "inference.predict -> pipeline" in c or "pipeline -> inference.predict" in c for c in _cycles(edges)
    )


def test_foundations_and_domain_do_not_import_torch():
    """core and domain (data, text, metrics, calibration, examples, rules) run where torch is not
    installed."""
    heavy = {"torch", "transformers", "accelerate"}
    for name, path in modules().items():
        if LAYER_OF[unit_of(name)] > 1:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = {
            (a.name if isinstance(n, ast.Import) else n.module or "").split(".")[0]
            for n in ast.walk(tree)
            if isinstance(n, ast.Import | ast.ImportFrom)
            for a in (n.names if isinstance(n, ast.Import) else [n])
        }
        assert not imported & heavy, f"{name} imports {imported & heavy}"


def test_no_module_over_450_lines():
    long = {
        name: n
        for name, path in modules().items()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > 450
    }
    assert long == {}


def test_the_root_holds_few_modules_and_the_layers_are_subpackages():
    root_modules = sorted(p.name for p in PACKAGE.glob("*.py"))
    subpackages = sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py"))
    assert len(root_modules) <= MAX_ROOT_MODULES, root_modules
    assert len(subpackages) >= 4, subpackages
    assert set(subpackages) <= set(LAYER_OF), subpackages


def test_the_public_api_resolves():
    """Every name ``rulebert`` exports is importable from it (they load lazily, so a moved module would
    otherwise fail only when a user first asks for it)."""
    probe = (
        "import rulebert; missing = [n for n in rulebert.__all__ if getattr(rulebert, n, None) is None];"
        "from rulebert.training import train; assert callable(train.train_model); print(missing)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_server_starts_without_torch():
    """The server with an int8 file serves through onnxruntime alone: importing it must not pull torch or
    transformers (adaptation loads them when a job runs)."""
    probe = (
        "import sys, rulebert.server.app; print([m for m in ('torch', 'transformers') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _private_uses(path: Path, known: set[str]) -> list[str]:
    """``from rulebert.x import _name`` and ``module._name`` (``module`` a rulebert module imported here):
    uses of another module's private names."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    aliases: set[str] = set()
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("rulebert"):
            for alias in node.names:
                dotted = f"{node.module}.{alias.name}".removeprefix("rulebert.")
                if dotted in known:
                    aliases.add(alias.asname or alias.name)
                elif alias.name.startswith("_") and alias.name != "__version__":
                    found.append(f"{path.name}: from {node.module} import {alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("rulebert.") and alias.asname:
                    aliases.add(alias.asname)
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            found.append(f"{path.name}: {node.value.id}.{node.attr}")
    return found


def test_no_module_uses_another_modules_private_names():
    """A ``_name`` is its module's own: a helper two modules need gets a public name where it lives."""
    known = set(modules())
    assert [use for path in modules().values() for use in _private_uses(path, known)] == []


def test_library_code_does_not_print():
    """Messages go through ``logging.getLogger(__name__)`` (``core/logs.py``); the command line alone prints
    (its JSON summaries and its one-line errors)."""
    printing = []
    for name, path in modules().items():
        if unit_of(name) == "cli":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                printing.append(f"{name}:{node.lineno}")
    assert printing == []


def test_the_cli_and_the_server_log_lines_as_they_printed_them(capsys):
    import logging

    from rulebert.core.logs import attach_stderr_handler

    attach_stderr_handler()
    attach_stderr_handler()  # idempotent: one line per message
    logging.getLogger("rulebert.pipeline").info("predict backend: %s", "onnx-int8")
    logging.getLogger("rulebert.training.train").warning("%s: report.html not written (%s)", "m", "boom")
    assert capsys.readouterr().err.splitlines() == [
        "rulebert: predict backend: onnx-int8",
        "rulebert: warning: m: report.html not written (boom)",
    ]
