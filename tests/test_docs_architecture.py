"""docs/ARCHITECTURE.md names only what exists, and README's tree lists every module: checked from the source.

Every backticked span of docs/ARCHITECTURE.md (outside fenced blocks) is classified and checked against the code,
read with ``ast`` (nothing is imported, so no TensorFlow):

- a path (``serving/server.py``, ``tests/test_layers.py``, ``docs/V2.md``, ``core/``) must exist, under the
  repository or under ``tfsctl/``;
- a flag (``--enable_batching``, ``--to-tflite``) must be in the flag table (``serving/flags.py``) or a CLI option;
- a thread name (``tfsctl-grpc-loop``) must occur in a string of the code;
- ``Class.member`` / ``module.name`` must resolve: a member of that tfsctl class (its body, ``self.x`` assignments,
  its tfsctl bases) or a top-level name of that tfsctl module; a first part that is neither is an error unless it
  is an outside package (``grpc.health.v1``);
- a single name that looks like code (``ServerCore``, ``wait_until_ready``, ``_LOAD_POLL_S``) must be defined,
  assigned, passed, read as an attribute or written as a one-word string somewhere in ``tfsctl/``;
- a call (``Manager(event_bus=None, ...)``, ``ServerCore.handle(name, version=None, label=None)``) must name
  parameters the function has, in its order, with the defaults the code gives them.

A span may wrap over lines within a paragraph. In fenced blocks (the diagrams) every ``Class.member`` is checked
the same way. Other spans (routes, values, prose in backticks) are not code names and are left alone (a single name
also counts when tests/ defines it: the page names the layer checkers).

The module trees, README's ``tfsctl/`` tree and the Layers tree of docs/ARCHITECTURE.md, must name every module.

:func:`test_the_checker_sees_wrong_names` and :func:`test_the_tree_check_sees_a_missing_module` feed the checkers
wrong names and a missing module, so a checker that stops seeing them fails too.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "tfsctl"
DOC = ROOT / "docs" / "ARCHITECTURE.md"
README = ROOT / "README.md"

# First parts of dotted names that belong to other packages (the doc may name their APIs).
OUTSIDE = frozenset({
    "aiohttp", "asyncio", "ctypes", "faulthandler", "fsspec", "gc", "google", "grpc", "json", "logging",
    "multiprocessing", "np", "numpy", "opentelemetry", "orjson", "os", "prometheus_client", "rich", "signal",
    "tensorflow", "tensorflow_serving", "tf", "threading", "time", "tritonclient", "typer",
})
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_DOTTED = re.compile(rf"{_IDENT}(?:\.{_IDENT})*")
_CALL = re.compile(rf"^({_IDENT}(?:\.{_IDENT})*)\((.*)\)(?:\s*->.*)?$", re.S)
_PATH = re.compile(r"^[\w.-]+(?:/[\w.-]+)*(?:\.(?:py|md|toml|sh|txt)|/)$")
_FLAG = re.compile(r"^--([a-z][a-z0-9_-]*)(?:[= ].*)?$")
_THREAD = re.compile(r"^tfsctl-[a-z][a-z0-9-]*$")
_FENCE_MEMBER = re.compile(rf"\b([A-Z][A-Za-z0-9]*\.{_IDENT})\b")


# --- the code, read once ---------------------------------------------------------------------------------------


@dataclass
class Func:
    params: list[str]
    defaults: dict[str, str]


@dataclass
class Klass:
    name: str
    module: str
    bases: list[str]
    members: set[str] = field(default_factory=set)
    funcs: dict[str, Func] = field(default_factory=dict)
    fields: list[str] = field(default_factory=list)  # annotated class-level names, in order (dataclass fields)
    field_defaults: dict[str, str] = field(default_factory=dict)


@dataclass
class Module:
    name: str  # dotted, tfsctl.serving.server
    names: set[str] = field(default_factory=set)
    funcs: dict[str, Func] = field(default_factory=dict)


@dataclass
class Code:
    modules: dict[str, Module]  # by dotted name
    classes: dict[str, list[Klass]]  # by class name
    funcs: dict[str, list[Func]]  # every def, by name
    universe: set[str]  # every name the code defines, assigns, passes, reads or spells as a one-word string
    strings: set[str]  # every string constant (thread names, ...)
    flags: set[str]  # the flag table's names and the CLI's option spellings


def _func(node: ast.FunctionDef | ast.AsyncFunctionDef) -> Func:
    a = node.args
    positional = [*a.posonlyargs, *a.args]
    params = [p.arg for p in positional] + ([a.vararg.arg] if a.vararg else []) + [p.arg for p in a.kwonlyargs]
    params += [a.kwarg.arg] if a.kwarg else []
    params = [p for p in params if p not in ("self", "cls")]
    with_defaults = positional[len(positional) - len(a.defaults):]
    defaults = {p.arg: ast.unparse(d) for p, d in zip(with_defaults, a.defaults, strict=True)}
    defaults.update({p.arg: ast.unparse(d) for p, d in zip(a.kwonlyargs, a.kw_defaults, strict=True) if d is not None})
    return Func(params, defaults)


def _targets(node: ast.AST) -> list[ast.expr]:
    if isinstance(node, ast.Assign):
        return list(node.targets)
    if isinstance(node, (ast.AnnAssign, ast.AugAssign)):
        return [node.target]
    return []


def _names_in_target(target: ast.expr) -> list[str]:
    if isinstance(target, ast.Name):
        return [target.id]
    if isinstance(target, (ast.Tuple, ast.List)):
        return [n for t in target.elts for n in _names_in_target(t)]
    return []


def _self_attrs(node: ast.AST) -> set[str]:
    """``self.x`` assigned anywhere below ``node``."""
    found = set()
    for sub in ast.walk(node):
        for target in _targets(sub):
            for t in ast.walk(target):
                if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self":
                    found.add(t.attr)
    return found


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def read_code(package: Path) -> Code:
    modules: dict[str, Module] = {}
    classes: dict[str, list[Klass]] = {}
    funcs: dict[str, list[Func]] = {}
    universe: set[str] = set()
    strings: set[str] = set()
    flags: set[str] = set()
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        mod = modules[_module_name(path, package)] = Module(_module_name(path, package))
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                mod.names.add(node.name)
                if not isinstance(node, ast.ClassDef):
                    mod.funcs[node.name] = _func(node)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                mod.names.update((a.asname or a.name).split(".")[0] for a in node.names)
            for target in _targets(node):
                mod.names.update(_names_in_target(target))
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                klass = Klass(node.name, mod.name, [ast.unparse(b).split(".")[-1] for b in node.bases])
                for item in node.body:
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                        klass.members.add(item.name)
                        if not isinstance(item, ast.ClassDef):
                            klass.funcs[item.name] = _func(item)
                    for target in _targets(item):
                        klass.members.update(_names_in_target(target))
                    if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                        klass.fields.append(item.target.id)
                        if item.value is not None:
                            klass.field_defaults[item.target.id] = ast.unparse(item.value)
                klass.members |= _self_attrs(node)
                classes.setdefault(node.name, []).append(klass)
                universe.add(node.name)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                funcs.setdefault(node.name, []).append(_func(node))
                universe.add(node.name)
                universe.update(a.arg for a in ast.walk(node.args) if isinstance(a, ast.arg))
            elif isinstance(node, ast.Name):
                universe.add(node.id)
            elif isinstance(node, ast.Attribute):
                universe.add(node.attr)
            elif isinstance(node, ast.keyword) and node.arg:
                universe.add(node.arg)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                strings.add(node.value)
                if re.fullmatch(r"[\w.:-]+", node.value):
                    universe.add(node.value)
            elif isinstance(node, ast.Call) and path.name == "flags.py" and ast.unparse(node.func) == "Flag" \
                    and node.args and isinstance(node.args[0], ast.Constant):
                flags.add(str(node.args[0].value))
        if path.name == "cli.py":
            flags.update(s[2:] for s in strings if re.fullmatch(r"--[a-z][a-z0-9-]*", s))
    return Code(modules, classes, funcs, universe, strings, flags)


# --- the doc ------------------------------------------------------------------------------------------------------


def spans(text: str) -> tuple[list[str], list[str]]:
    """(inline code spans outside fenced blocks, the fenced blocks' lines)."""
    inline, fenced, block = [], [], False
    prose: list[str] = []
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            block = not block
            prose.append("")
            continue
        (fenced if block else prose).append(line)
    # A span may wrap over lines inside a paragraph (long signatures), never across a blank line.
    inline = [" ".join(span.split()) for para in re.split(r"\n\s*\n", "\n".join(prose))
              for span in re.findall(r"`([^`]+)`", para)]
    return inline, fenced


def _looks_like_code(name: str) -> bool:
    """A single word that names code: snake_case, _private, CONSTANT_CASE or Capitalized (``Manager``,
    ``ServerCore``); plain lower-case words and all-capital words (``AVAILABLE``) are prose."""
    return "_" in name or re.fullmatch(r"[A-Z][A-Za-z0-9]*[a-z][A-Za-z0-9]*", name) is not None


class Checker:
    def __init__(self, code: Code, roots: tuple[Path, ...]) -> None:
        self.code = code
        self.roots = roots
        self.by_last: dict[str, list[Module]] = {}
        for mod in code.modules.values():
            self.by_last.setdefault(mod.name.split(".")[-1], []).append(mod)
            self.by_last.setdefault(mod.name, []).append(mod)
            if mod.name.count("."):  # core.config, serving.tensors
                self.by_last.setdefault(".".join(mod.name.split(".")[1:]), []).append(mod)

    # members of classes, following tfsctl bases
    def _class_has(self, klass: Klass, member: str, seen: frozenset[str] = frozenset()) -> bool:
        if member in klass.members:
            return True
        for base in klass.bases:
            for b in self.code.classes.get(base, []):
                if b.name not in seen and self._class_has(b, member, seen | {klass.name}):
                    return True
        return False

    def _class_func(self, klass: Klass, member: str) -> Func | None:
        if member in klass.funcs:
            return klass.funcs[member]
        for base in klass.bases:
            for b in self.code.classes.get(base, []):
                f = self._class_func(b, member)
                if f is not None:
                    return f
        return None

    def _constructor(self, klass: Klass) -> Func | None:
        f = self._class_func(klass, "__init__")
        if f is not None:
            return f
        if klass.fields:  # a dataclass
            return Func(klass.fields, dict(klass.field_defaults))
        return None

    def resolve(self, dotted: str) -> tuple[str | None, list[Func]]:
        """(error or None, the functions the name may call)."""
        parts = dotted.split(".")
        if len(parts) == 1:
            name = parts[0]
            candidates = [f for k in self.code.classes.get(name, []) if (f := self._constructor(k))]
            candidates += self.code.funcs.get(name, [])
            if name in self.code.universe or name in self.by_last:
                return None, candidates
            return f"`{name}` is not defined anywhere in tfsctl/", []
        # the longest prefix that is a module, else a class
        for cut in range(len(parts) - 1, 0, -1):
            head, rest = ".".join(parts[:cut]), parts[cut:]
            for mod in self.by_last.get(head, []) + self.by_last.get(f"tfsctl.{head}", []):
                sub = f"{mod.name}.{rest[0]}"
                if sub in self.code.modules:
                    return self.resolve(".".join([sub, *rest[1:]])) if len(rest) > 1 else (None, [])
                if rest[0] in mod.names:
                    if len(rest) == 1:
                        f = mod.funcs.get(rest[0])
                        ks = [k for k in self.code.classes.get(rest[0], []) if k.module == mod.name]
                        return None, ([f] if f else []) + [c for k in ks if (c := self._constructor(k))]
                    return self._member(rest[0], rest[1:], dotted)
            if cut == 1 and head in self.code.classes:
                return self._member(head, rest, dotted)
        if parts[0] in self.by_last:
            return f"`{dotted}`: module `{parts[0]}` has no `{parts[1]}`", []
        if parts[0] in OUTSIDE:
            return None, []
        return f"`{dotted}`: `{parts[0]}` is neither a tfsctl module nor a tfsctl class", []

    def _member(self, cls: str, rest: list[str], dotted: str) -> tuple[str | None, list[Func]]:
        klasses = self.code.classes.get(cls, [])
        if not klasses:
            return f"`{dotted}`: no class `{cls}` in tfsctl/", []
        member = rest[0]
        owners = [k for k in klasses if self._class_has(k, member)]
        if not owners:
            return f"`{dotted}`: class `{cls}` has no member `{member}`", []
        if len(rest) > 1:  # Class.Nested.member or Class.attr.x: the nested class, if it is one
            if member in self.code.classes:
                return self._member(member, rest[1:], dotted)
            return None, []
        funcs = [f for k in owners if (f := self._class_func(k, member))]
        funcs += [c for k in owners for n in self.code.classes.get(member, []) if (c := self._constructor(n))]
        return None, funcs

    @staticmethod
    def _args(text: str) -> list[tuple[str, str | None]]:
        """The doc's parameters: (name, default or None); values, ``*`` and ``...`` are skipped."""
        out, depth, cur = [], 0, ""
        for ch in text + ",":
            if ch in "([{":
                depth += 1
            elif ch in ")]}":
                depth -= 1
            if ch == "," and depth == 0:
                item = cur.strip()
                cur = ""
                m = re.fullmatch(rf"\*{{0,2}}({_IDENT})(?:\s*:\s*[^=]+?)?(?:\s*=\s*(.+))?", item)
                if m and m.group(1) not in ("self",):
                    out.append((m.group(1), m.group(2).strip() if m.group(2) else None))
                continue
            cur += ch
        return out

    def _check_call(self, dotted: str, args: str, funcs: list[Func]) -> str | None:
        wanted = self._args(args)
        if not wanted or not funcs:
            return None
        problems = []
        for f in funcs:
            names = [n for n, _ in wanted]
            missing = [n for n in names if n not in f.params]
            if missing:
                problems.append(f"no parameter(s) {missing} (it has {f.params})")
                continue
            order = [f.params.index(n) for n in names]
            if order != sorted(order):
                problems.append(f"parameters {names} are not in the code's order {f.params}")
                continue
            bad = [f"{n}={d} (code: {f.defaults.get(n)})" for n, d in wanted
                   if d not in (None, "...") and f.defaults.get(n) != _normal(d)]
            if bad:
                problems.append(f"defaults differ: {', '.join(bad)}")
                continue
            return None
        return f"`{dotted}({args})`: " + "; ".join(problems)

    def check_span(self, span: str) -> str | None:
        span = span.strip()
        if _PATH.fullmatch(span) and "/" in span:
            if any((root / span).exists() for root in self.roots):
                return None
            return f"`{span}`: no such file or directory"
        if re.fullmatch(r"[\w-]+\.(?:py|md|toml)", span):  # a bare file name: in the repository's top or anywhere below
            if (self.roots[0] / span).exists() or any(next(root.rglob(span), None) for root in self.roots[1:]):
                return None
            return f"`{span}`: no such file in tfsctl/"
        m = _FLAG.fullmatch(span)
        if m:
            flag = m.group(1)
            if flag in self.code.flags or flag.replace("-", "_") in self.code.flags:
                return None
            return f"`{span}`: no such flag in serving/flags.py nor option in cli.py"
        if _THREAD.fullmatch(span):
            if any(span in s for s in self.code.strings):
                return None
            return f"`{span}`: no thread of that name in tfsctl/"
        m = _CALL.fullmatch(span)
        if m:
            error, funcs = self.resolve(m.group(1))
            return error or self._check_call(m.group(1), m.group(2), funcs)
        if _DOTTED.fullmatch(span) and "." in span:
            if re.fullmatch(r"[\w.]+\.(?:pb|pbtxt|tflite|keras|h5|so|json|png|proto|cc|h)", span):
                return None  # a file name
            return self.resolve(span)[0]
        if re.fullmatch(_IDENT, span) and _looks_like_code(span):
            return self.resolve(span)[0]
        return None

    def check(self, text: str) -> list[str]:
        inline, fenced = spans(text)
        problems = [p for s in inline if (p := self.check_span(s))]
        for line in fenced:
            for name in _FENCE_MEMBER.findall(line):
                if name.split(".")[0] in self.code.classes and (p := self.resolve(name)[0]):
                    problems.append(f"(diagram) {p}")
        return sorted(set(problems))


def _normal(expr: str) -> str:
    """A default as the code's ``ast.unparse`` writes it (quotes, spaces)."""
    try:
        return ast.unparse(ast.parse(expr, mode="eval").body)
    except SyntaxError:
        return expr


def _checker() -> Checker:
    code = read_code(PACKAGE)
    for path in sorted((ROOT / "tests").glob("test_*.py")):  # the doc names the layer checkers of tests/
        code.universe.update(n.name for n in ast.walk(ast.parse(path.read_text()))
                             if isinstance(n, (ast.FunctionDef, ast.ClassDef)))
    return Checker(code, (ROOT, PACKAGE))


def test_every_name_in_architecture_md_exists() -> None:
    problems = _checker().check(DOC.read_text())
    assert not problems, "docs/ARCHITECTURE.md names what the code does not have:\n" + "\n".join(problems)


RIGHT = (
    "core/manager.py", "serving/", "docs/V2.md", "cli.py", "rpc.py", "--enable_batching", "--to-tflite",
    "tfsctl-grpc-loop", "ServerCore.handle", "Manager.events", "model_layout.parse_version_dir", "Servable.run",
    "TfLiteServable.signature", "ServerCore", "wait_until_ready", "grpc.health.v1", "request_core.RequestCore",
    "serving.tensors.to_numpy", "Manager(event_bus=None, num_load_threads=4)", "ServerCoreOptions(freeze_gc=True)",
    "ServerHooks(ready=None)", "ServerCore.handle(name, version=None, label=None)", "/v1/models/NAME:predict",
    "AVAILABLE", "saved_model.pb", "a phrase in backticks",
)
WRONG = (
    "core/no_such.py", "serving/nowhere/", "no_such.py", "--enable_batchingg", "tfsctl-no-such-thread",
    "ServerCore.handel", "model_layout.parse_version_dirs", "NoSuchClass.run", "core.begin", "ServerCoreOption",
    "wait_until_readyy", "Manager(num_load_threads=4, event_bus=None)", "Manager(num_load_threads=5)",
    "Manager(threads=4)", "ServerCore.handle(name, labels=None)",
)


def test_the_checker_sees_wrong_names() -> None:
    """Each kind of span, right and wrong: only the wrong ones are reported (and in a diagram too)."""
    checker = _checker()
    assert [s for s in RIGHT if checker.check_span(s)] == []
    assert [s for s in WRONG if not checker.check_span(s)] == []
    page = ("```\nSource --> ServerCore.apply_config --> Manager.set_aspired_version\n```\n`Manager.configure`\n"
            "a span wrapped over lines: `Manager(event_bus=None,\n   num_load_threads=8)`\n")
    assert checker.check(page) == [
        "(diagram) `Manager.set_aspired_version`: class `Manager` has no member `set_aspired_version`",
        "`Manager(event_bus=None, num_load_threads=8)`: defaults differ: num_load_threads=8 (code: 4)"]


# --- the module trees: README's and the layer tree of docs/ARCHITECTURE.md ---------------------------------------


def tree_groups(lines: list[str], indent: int) -> dict[str, set[str]]:
    """{package ("" = the other lines): the words of its lines}. A package line is ``name/`` at column ``indent``;
    deeper-indented lines continue the group above; a line ends the tree when it is indented less."""
    groups: dict[str, set[str]] = {"": set()}
    current = ""
    for line in lines:
        if line.strip().startswith("```") or len(line) - len(line.lstrip()) < indent:
            break
        m = re.match(rf"^ {{{indent}}}([a-z_]+)/\s", line + " ")
        if m:
            current = m.group(1)
            groups.setdefault(current, set())
        elif re.match(rf"^ {{{indent}}}\S", line):
            current = ""
        groups[current].update(w.removesuffix(".py") for w in re.findall(r"[A-Za-z_][\w]*(?:\.py)?", line))
    return groups


def readme_tree(text: str) -> dict[str, set[str]]:
    """README's ``tfsctl/`` tree (in the Development section), two spaces in."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.rstrip() == "tfsctl/")
    return tree_groups(lines[start + 1:], 2)


def layer_tree(text: str) -> dict[str, set[str]]:
    """The fenced tree that opens docs/ARCHITECTURE.md's Layers section, flush left."""
    lines = text.splitlines()
    start = lines.index("## Layers")
    fence = next(i for i in range(start, len(lines)) if lines[i].startswith("```"))
    return tree_groups(lines[fence + 1:], 0)


def missing_from_tree(groups: dict[str, set[str]], package: Path, packages: tuple[str, ...] | None = None
                      ) -> list[str]:
    """Modules of ``package`` the tree does not name (only those of ``packages`` and the top level, if given)."""
    missing = []
    for path in sorted(package.rglob("*.py")):
        if path.stem in ("__init__", "__main__"):
            continue
        rel = path.relative_to(package)
        group = rel.parts[0] if len(rel.parts) > 1 else ""
        if packages is not None and group and group not in packages:
            continue
        if path.stem not in groups.get(group, set()):
            missing.append(str(rel))
    return missing


def test_readme_tree_lists_every_module() -> None:
    missing = missing_from_tree(readme_tree(README.read_text()), PACKAGE)
    assert not missing, f"README's tfsctl/ tree does not list: {', '.join(missing)}"


def test_the_layer_tree_lists_every_module() -> None:
    """The Layers tree names every module of core/, serving/ and client/ and every top-level module."""
    missing = missing_from_tree(layer_tree(DOC.read_text()), PACKAGE, ("core", "serving", "client"))
    assert not missing, f"docs/ARCHITECTURE.md's layer tree does not list: {', '.join(missing)}"


def test_the_tree_check_sees_a_missing_module(tmp_path: Path) -> None:
    (tmp_path / "core").mkdir()
    for name in ("cli.py", "core/__init__.py", "core/manager.py", "core/source.py"):
        (tmp_path / name).write_text("")
    readme = "x\n```text\ntfsctl/\n  cli.py   the CLI\n  core/    manager\n           (more)\nsamples/\n```\n"
    assert missing_from_tree(readme_tree(readme), tmp_path) == ["core/source.py"]
    assert missing_from_tree(readme_tree(readme.replace("(more)", "source")), tmp_path) == []
    doc = "## Layers\n\n```\ncli.py    typer\ncore/     manager,\n          (more)\n```\n"
    assert missing_from_tree(layer_tree(doc), tmp_path, ("core",)) == ["core/source.py"]
    assert missing_from_tree(layer_tree(doc.replace("(more)", "source")), tmp_path, ("core",)) == []
