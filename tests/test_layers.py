"""The layer rules of docs/ARCHITECTURE.md, read from the source with ``ast`` (nothing is imported).

- The bottom modules (errors, tensors, savedmodel, model_layout, voc, tf_messages, tflite_model, tfrecord) import
  no other tfsctl layer.
- ``tfsctl/core`` imports only itself and the bottom: never serving, client, the CLI or the model side.
- The model side (export, models, inspection, run, testing) imports only itself and the bottom.
- ``tfsctl/serving`` imports only itself, core and the bottom: never the client or the CLI.
- ``tfsctl/client`` never loads the TensorFlow runtime. Only ``client/apis.py`` imports TensorFlow's and TF
  Serving's protos, through its shim (the modules in its ``_MODULES``); every tfsctl module the client reaches, at
  any depth, may import at module level only those proto modules, never ``tensorflow`` itself. The client does not
  import serving, the CLI or the model side either.
- No import cycle anywhere in ``tfsctl/``: an import at module level, inside a function or under ``TYPE_CHECKING``
  is an edge (a function-level import only postpones the cycle to run time, and a ``TYPE_CHECKING`` one still
  means the lower module knows the upper one); a package's implicit import of its parent is not.
- ``serving/supervisor.py`` (``serve --workers``' supervisor) never loads TensorFlow: no module it loads at module
  level, at any depth, imports ``tensorflow`` or ``tensorflow_serving`` at module level.
- Nothing assigns an attribute of an imported class or module at run time (``Manager.is_ready = ...``,
  ``setattr(Metrics, ...)``): a process that needs other behaviour plugs it in through hooks.
- No object's private attribute is set from outside it: ``x._name = ...`` (or ``+=``, ``del``, ``setattr(x,
  "_name", ...)``) only where ``x`` is ``self`` or ``cls``; another object's state changes through its methods.

Each checker returns the violations it found, and :func:`test_the_checkers_see_violations` feeds them a small tree
that breaks every rule, so a checker that stops seeing imports fails too.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "tfsctl"
BOTTOM = frozenset({"tfsctl.errors", "tfsctl.tensors", "tfsctl.savedmodel", "tfsctl.model_layout", "tfsctl.voc",
                    "tfsctl.tf_messages", "tfsctl.tflite_model", "tfsctl.tfrecord"})
TF_ROOTS = ("tensorflow", "tensorflow_serving")
SHIM = "tfsctl.client.apis"


@dataclass(frozen=True)
class Import:
    """One import statement's target module(s): ``from a.b import c`` gives ``a.b`` and the candidate ``a.b.c``."""

    module: str
    names: tuple[str, ...]
    top_level: bool  # runs when the module is imported (not inside a function, not under TYPE_CHECKING)
    line: int

    def targets(self) -> list[str]:
        return [self.module] + [f"{self.module}.{n}" for n in self.names if n != "*"]


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(path: Path, name: str) -> list[Import]:
    """Every import in the file, relative ones resolved, each marked top-level or not."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, False)
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    visit(ast.Module(body=[stmt], type_ignores=[]), False)
                for stmt in child.orelse:
                    visit(ast.Module(body=[stmt], type_ignores=[]), top)
            elif isinstance(child, ast.Import):
                found.extend(Import(a.name, (), top, child.lineno) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                module = child.module or ""
                if child.level:
                    base = package.split(".")
                    base = base[: len(base) - (child.level - 1)]
                    module = ".".join(base + ([module] if module else []))
                found.append(Import(module, tuple(a.name for a in child.names), top, child.lineno))
            else:
                visit(child, top)

    visit(ast.parse(path.read_text(), str(path)), True)
    return found


def scan(root: Path) -> dict[str, tuple[Path, list[Import]]]:
    """{module name: (file, its imports)} for every module of the package at ``root``."""
    return {module_name(p, root): (p, imports_of(p, module_name(p, root))) for p in sorted(root.rglob("*.py"))}


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _tfsctl_targets(imp: Import, modules: dict) -> list[str]:
    """The tfsctl modules an import loads (a ``from pkg import name`` loads ``pkg.name`` when that is a module)."""
    if not _in(imp.module, "tfsctl"):
        return []
    return [t for t in imp.targets()[1:] if t in modules] or [imp.module]


def _is_tf(module: str) -> bool:
    return any(_in(module, r) for r in TF_ROOTS)


def shim_modules(modules: dict) -> frozenset[str]:
    """The proto modules ``client/apis.py`` imports without the TF runtime (its ``_MODULES`` tuple)."""
    path, _ = modules[SHIM]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_MODULES" for t in node.targets):
            return frozenset(ast.literal_eval(node.value))
    raise AssertionError(f"{path}: no _MODULES tuple")


def bottom_violations(modules: dict) -> list[str]:
    bad = []
    for name, (path, imps) in modules.items():
        if name not in BOTTOM:
            continue
        for imp in imps:
            for target in _tfsctl_targets(imp, modules):
                if target not in BOTTOM and target != "tfsctl":
                    bad.append(f"{path}:{imp.line}: bottom module {name} imports {target}")
    return bad


def core_violations(modules: dict) -> list[str]:
    return allowed_violations(modules, ("tfsctl.core",), ("tfsctl.core",), "core")


MODEL_SIDE = ("tfsctl.export", "tfsctl.models", "tfsctl.inspection", "tfsctl.run", "tfsctl.testing")


def allowed_violations(modules: dict, layer: tuple[str, ...], allowed: tuple[str, ...], what: str) -> list[str]:
    """Imports (at any depth) from modules in ``layer`` of tfsctl modules outside ``allowed`` and the bottom."""
    bad = []
    for name, (path, imps) in modules.items():
        if not any(_in(name, p) for p in layer):
            continue
        for imp in imps:
            for target in _tfsctl_targets(imp, modules):
                if not (any(_in(target, p) for p in allowed) or target in BOTTOM or target == "tfsctl"):
                    bad.append(f"{path}:{imp.line}: {name} ({what}) imports {target}")
    return bad


def client_violations(modules: dict) -> list[str]:
    """Client imports that could load the TF runtime or reach above the client's allowed layers."""
    bad = []
    shim = shim_modules(modules)
    allowed_below = ("tfsctl.client", "tfsctl.core")
    client = [n for n in modules if _in(n, "tfsctl.client")]
    for name in client:
        path, imps = modules[name]
        for imp in imps:
            if _is_tf(imp.module) and name != SHIM:
                bad.append(f"{path}:{imp.line}: {name} imports {imp.module} (take protos from {SHIM})")
            for target in _tfsctl_targets(imp, modules):
                if not (any(_in(target, p) for p in allowed_below) or target in BOTTOM or target == "tfsctl"):
                    bad.append(f"{path}:{imp.line}: {name} (client) imports {target}")
    # Everything the client loads: its own modules' imports at any depth, then module-level imports onwards.
    seen: dict[str, str] = {}
    todo = [(n, "client") for n in client]
    while todo:
        name, via = todo.pop()
        if name in seen or name not in modules:
            continue
        seen[name] = via
        path, imps = modules[name]
        parents = name.split(".")
        todo += [(".".join(parents[:i]), name) for i in range(1, len(parents))]
        in_client = _in(name, "tfsctl.client")
        for imp in imps:
            if not (imp.top_level or in_client):
                continue
            if _is_tf(imp.module) and name != SHIM and imp.top_level:
                loaded = [t for t in imp.targets() if t in shim] or [imp.module]
                if not all(t in shim for t in loaded):
                    bad.append(f"{path}:{imp.line}: {name} (loaded by the client via {via}) imports {imp.module} "
                               f"at module level, which loads the TensorFlow runtime")
            todo += [(t, name) for t in _tfsctl_targets(imp, modules)]
    return bad


def import_cycles(modules: dict) -> list[str]:
    """Every import cycle among tfsctl modules, one line per cycle (its strongly connected component, sorted)."""
    graph = {name: sorted({t for imp in imps for t in _tfsctl_targets(imp, modules) if t in modules and t != name})
             for name, (_path, imps) in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[str] = []

    def connect(node: str) -> None:  # Tarjan's algorithm (the package is small: recursion depth is no issue)
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append("import cycle: " + " <-> ".join(sorted(component)))

    for name in sorted(graph):
        if name not in index:
            connect(name)
    return sorted(cycles)


SUPERVISOR = "tfsctl.serving.supervisor"


def tf_loaded_at_module_level(modules: dict, start: str) -> list[str]:
    """The TensorFlow imports that importing ``start`` runs: module-level imports only, followed at any depth."""
    bad = []
    seen: set[str] = set()
    todo = [(start, start)]
    while todo:
        name, via = todo.pop()
        if name in seen or name not in modules:
            continue
        seen.add(name)
        path, imps = modules[name]
        parents = name.split(".")
        todo += [(".".join(parents[:i]), name) for i in range(1, len(parents))]
        for imp in imps:
            if not imp.top_level:
                continue
            if _is_tf(imp.module):
                bad.append(f"{path}:{imp.line}: {name} (loaded by {start} via {via}) imports {imp.module}")
            todo += [(t, name) for t in _tfsctl_targets(imp, modules)]
    return bad


def class_patches(modules: dict) -> list[str]:
    """Assignments (``=``, ``+=``, annotated, ``setattr``/``delattr``) to an attribute of a name the module imported:
    a class or module of another module changed at run time."""
    bad = []
    for name, (path, _imps) in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        imported: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported.update((a.asname or a.name).split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                imported.update(a.asname or a.name for a in node.names)

        def root(expr: ast.expr) -> str | None:
            while isinstance(expr, ast.Attribute):
                expr = expr.value
            return expr.id if isinstance(expr, ast.Name) else None

        for node in ast.walk(tree):
            targets: list[ast.expr] = []
            if isinstance(node, ast.Assign):
                targets = node.targets
            elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
                targets = [node.target]
            elif isinstance(node, ast.Delete):
                targets = node.targets
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                  and node.func.id in ("setattr", "delattr") and node.args):
                targets = [ast.Attribute(value=node.args[0], attr="?", ctx=ast.Store(), lineno=node.lineno)]
            for target in targets:
                for t in ast.walk(target) if isinstance(target, ast.Tuple) else [target]:
                    if isinstance(t, ast.Attribute) and root(t) in imported:
                        bad.append(f"{path}:{node.lineno}: {name} assigns {ast.unparse(t)}")
    return bad


def _assigned(node: ast.AST) -> list[ast.expr]:
    """The attribute targets a statement or call assigns or deletes (``setattr``/``delattr`` with a constant name
    stand for ``obj.name``)."""
    if isinstance(node, (ast.Assign, ast.Delete)):
        targets = list(node.targets)
    elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
        targets = [node.target]
    elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("setattr", "delattr")
          and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)):
        targets = [ast.Attribute(value=node.args[0], attr=node.args[1].value, ctx=ast.Store())]
    else:
        return []
    found: list[ast.expr] = []
    while targets:
        target = targets.pop()
        if isinstance(target, (ast.Tuple, ast.List)):
            targets += target.elts
        elif isinstance(target, ast.Starred):
            targets.append(target.value)
        elif isinstance(target, ast.Attribute):
            found.append(target)
    return found


def private_assignments(modules: dict) -> list[str]:
    """Assignments to another object's private attribute: ``x._name`` where ``x`` is not ``self`` or ``cls``
    (dunders such as ``__doc__`` are not private)."""
    bad = []
    for name, (path, _imps) in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            for target in _assigned(node):
                assert isinstance(target, ast.Attribute)
                attr = target.attr
                if not attr.startswith("_") or (attr.startswith("__") and attr.endswith("__")):
                    continue
                if isinstance(target.value, ast.Name) and target.value.id in ("self", "cls"):
                    continue
                bad.append(f"{path}:{node.lineno}: {name} sets {ast.unparse(target)}")
    return bad


def test_no_import_cycles() -> None:
    assert import_cycles(scan(PACKAGE_DIR)) == []


def test_the_supervisor_never_loads_tensorflow() -> None:
    modules = scan(PACKAGE_DIR)
    assert SUPERVISOR in modules
    assert tf_loaded_at_module_level(modules, SUPERVISOR) == []


def test_no_class_or_module_of_another_module_is_patched() -> None:
    assert class_patches(scan(PACKAGE_DIR)) == []


def test_no_private_attribute_is_set_from_outside() -> None:
    assert private_assignments(scan(PACKAGE_DIR)) == []


def test_bottom_modules_import_no_layer_above() -> None:
    assert bottom_violations(scan(PACKAGE_DIR)) == []


def test_core_imports_only_core_and_the_bottom() -> None:
    assert core_violations(scan(PACKAGE_DIR)) == []


def test_model_side_and_serving_import_only_below() -> None:
    modules = scan(PACKAGE_DIR)
    assert allowed_violations(modules, MODEL_SIDE, MODEL_SIDE, "model side") == []
    assert allowed_violations(modules, ("tfsctl.serving",), ("tfsctl.serving", "tfsctl.core"), "serving") == []


def test_client_never_loads_tensorflow_and_stays_in_its_layers() -> None:
    modules = scan(PACKAGE_DIR)
    assert client_violations(modules) == []
    assert "tfsctl.core.config" in modules  # the reload command's parser: reached, and checked, through rpc.py


def test_the_checkers_see_violations(tmp_path: Path) -> None:
    """A tree that breaks each rule once (at module level, inside a function, relatively, through a chain)."""
    root = tmp_path / "tfsctl"
    files = {
        "__init__.py": "",
        "errors.py": "from tfsctl.core import manager\n",
        "savedmodel.py": "from tensorflow.core.protobuf import meta_graph_pb2\n",
        "tensors.py": "",
        "core/__init__.py": "",
        "core/manager.py": "def f():\n    from tfsctl.serving import metrics\n",
        "core/config.py": "from ..client import rpc\nfrom tfsctl.savedmodel import X\n",
        "core/typed.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import tensorflow\n",
        "serving/__init__.py": "",
        "serving/metrics.py": "",
        "client/__init__.py": "",
        "client/apis.py": "_MODULES = ('tensorflow_serving.apis.predict_pb2',)\n"
                          "from tensorflow_serving.apis import predict_pb2\n",
        "client/rpc.py": "def reload():\n    from tfsctl.core import config\n",
        "client/render.py": "def f():\n    import tensorflow as tf\n",
        "client/typed.py": "from tfsctl.core import typed\nfrom tfsctl.serving import metrics\n",
        "export/__init__.py": "from tfsctl.serving import metrics\n",
        "serving/grpc_api.py": "def f():\n    from tfsctl.client import rpc\n",
        "serving/server.py": "from tfsctl.serving import cycle_b\n",
        "serving/cycle_b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import cycle_c\n",
        "serving/cycle_c.py": "def f():\n    from tfsctl.serving.server import X\n",
        "serving/supervisor.py": "from tfsctl.serving import worker\n",
        "serving/worker.py": "import os\nfrom tensorflow_serving.apis import predict_pb2\n"
                             "def main():\n    import tensorflow\n"
                             "    from tfsctl.core.manager import Manager\n    import tfsctl.serving.metrics as m\n"
                             "    Manager.is_ready = lambda self: True\n    m.Metrics.collect += 1\n"
                             "    setattr(Manager, 'stop', None)\n    os.environ = {}\n"
                             "    server = object()\n    server.ready = True\n",
        "serving/private.py": "class A:\n    def __init__(self, other):\n        self._own = 1\n"
                              "        other._x = 2\n        self.peer._y, self._z = 3, 4\n"
                              "        setattr(other, '_w', 5)\n        del other._v\n        other.__doc__ = ''\n"
                              "    @classmethod\n    def make(cls):\n        cls._count += 1\n",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    modules = scan(root)

    assert [v.split(": ", 1)[1] for v in bottom_violations(modules)] == [
        "bottom module tfsctl.errors imports tfsctl.core.manager"]
    assert sorted(v.split(": ", 1)[1] for v in core_violations(modules)) == [
        "tfsctl.core.config (core) imports tfsctl.client.rpc",
        "tfsctl.core.manager (core) imports tfsctl.serving.metrics",
    ]
    assert [v.split(": ", 1)[1] for v in allowed_violations(modules, MODEL_SIDE, MODEL_SIDE, "model side")] == [
        "tfsctl.export (model side) imports tfsctl.serving.metrics"]
    assert [v.split(": ", 1)[1] for v in allowed_violations(
        modules, ("tfsctl.serving",), ("tfsctl.serving", "tfsctl.core"), "serving")] == [
        "tfsctl.serving.grpc_api (serving) imports tfsctl.client.rpc"]
    client = client_violations(modules)
    assert any("tfsctl.client.render imports tensorflow" in v for v in client), client
    assert any("tfsctl.client.typed (client) imports tfsctl.serving.metrics" in v for v in client), client
    # rpc -> core.config -> savedmodel, which imports a TF proto the shim does not provide: found through the chain
    assert any("tfsctl.savedmodel (loaded by the client via tfsctl.core.config) imports tensorflow.core.protobuf"
               in v for v in client), client
    assert not any(v.startswith((str(root / "core/typed.py"), str(root / "client/apis.py"))) for v in client), client
    assert [v.split(": ", 1)[1] for v in tf_loaded_at_module_level(modules, "tfsctl.serving.supervisor")] == [
        "tfsctl.serving.worker (loaded by tfsctl.serving.supervisor via tfsctl.serving.supervisor) imports "
        "tensorflow_serving.apis"]  # not the import inside main(): that runs in the worker process only
    assert sorted(v.split(": ", 1)[1] for v in class_patches(modules)) == [  # not server.ready: a local object
        "tfsctl.serving.worker assigns Manager.?", "tfsctl.serving.worker assigns Manager.is_ready",
        "tfsctl.serving.worker assigns m.Metrics.collect", "tfsctl.serving.worker assigns os.environ"]
    assert sorted(v.split(": ", 1)[1] for v in private_assignments(modules)) == [  # not self._own, cls._count
        "tfsctl.serving.private sets other._v", "tfsctl.serving.private sets other._w",
        "tfsctl.serving.private sets other._x", "tfsctl.serving.private sets self.peer._y"]
    # a cycle of three through a module-level, a TYPE_CHECKING and a function-level import; the rpc -> core.config
    # -> client.rpc loop (one import inside a function) is the other
    assert import_cycles(modules) == [
        "import cycle: tfsctl.client.rpc <-> tfsctl.core.config",
        "import cycle: tfsctl.serving.cycle_b <-> tfsctl.serving.cycle_c <-> tfsctl.serving.server",
    ]
