"""The house's floors, read from the source with ``ast``: import circles, imports running back up the
floors, and how often the call path of ``load_pretrained_model`` climbs back up. ``tests/test_layout.py``
holds the house to 0 of each; ``benchmarks/house.py`` writes the counts."""

from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository: zoo/ and converters/

# The floors, lowest first. A module may import from its own floor or below, never from above.
FLOORS: list[tuple[str, tuple[str, ...]]] = [
    ("nets", ("zoo.nets", "zoo.nets.*")),
    ("registry", ("zoo.registry", "zoo.models", "zoo.version", "zoo.paths", "zoo.fileio", "zoo.images",
                  "zoo.transforms", "zoo.optimize", "zoo.clip.tokenizer")),
    ("weights", ("zoo.weights", "zoo.weights.*", "zoo.eval.published")),  # Meta's published figures: registry data the cards show
    ("load", ("zoo.loader", "zoo.clip", "zoo.clip.*")),
    ("publish", ("zoo.hub", "zoo.cards")),
    ("uses", ("zoo.inference", "zoo.training", "zoo.finetune", "zoo.detection", "zoo.export", "zoo.birder",
              "zoo.collection", "zoo.collection.*", "zoo.demo", "zoo.testing", "zoo.testing.*", "zoo.birder.*",
              "zoo.video", "zoo.gpu_decode", "zoo.show", "zoo.eval", "zoo.eval.*", "zoo.serve", "zoo.serve.*",
              "zoo.integrations", "zoo.integrations.*")),
    ("cli", ("zoo", "zoo.__main__", "zoo.birder.__main__", "zoo.cli", "zoo.cli.*", "converters", "converters.*")),
]


def floor(module: str) -> int:
    """The floor number of a module (0: nets); the most specific pattern wins."""
    best, level = -1, None
    for i, (_, patterns) in enumerate(FLOORS):
        for p in patterns:
            if fnmatch.fnmatchcase(module, p) and len(p) > best:
                best, level = len(p), i
    if level is None:
        raise KeyError(f"{module} is on no floor: add it to zoo.testing.layout.FLOORS")
    return level


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module of zoo/ and converters/ by dotted name (a package by its ``__init__``)."""
    found = {}
    for top in ("zoo", "converters"):
        for path in (root / top).rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _target(module: str | None, name: str | None, known: dict[str, Path]) -> str | None:
    """The module an import names: ``from a import b`` is ``a.b`` when that is a module, else ``a``."""
    if module is None:
        return None
    if name is not None and f"{module}.{name}" in known:
        return f"{module}.{name}"
    return module if module in known else None


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The zoo/converters modules a file imports, anywhere in it (inside functions too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0:
            found.update(t for a in node.names if (t := _target(node.module, a.name, known)))
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in known)
    return found


def graph(root: Path = ROOT) -> dict[str, set[str]]:
    known = modules(root)
    return {m: imports(p, known) - {m} for m, p in known.items()}


def circles(g: dict[str, set[str]]) -> list[list[str]]:
    """The import circles: strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(g.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def upward(g: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Imports that run back up: (importer, imported) with the imported module on a higher floor."""
    return sorted((a, b) for a, bs in g.items() for b in bs if floor(b) > floor(a))


def _functions(module: str, known: dict[str, Path]) -> tuple[dict[str, ast.FunctionDef], dict[str, tuple[str, str | None]]]:
    """A module's top-level functions, and what each imported name stands for: (module, attribute or None)."""
    tree = ast.parse(known[module].read_text(encoding="utf-8"))
    defs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    names: dict[str, tuple[str, str | None]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in known:
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                names[a.asname or a.name] = (sub, None) if sub in known else (node.module, a.name)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name in known and a.asname:
                    names[a.asname] = (a.name, None)
    return defs, names


def _definition(module: str, name: str, known: dict[str, Path], seen: frozenset = frozenset()) -> tuple[str, str] | None:
    """Where ``module.name`` is defined, following re-exports of packages."""
    if (module, name) in seen:
        return None
    defs, names = _functions(module, known)
    if name in defs:
        return module, name
    if name in names and names[name][1] is not None:
        return _definition(names[name][0], names[name][1], known, seen | {(module, name)})
    return None


def climbs(start: tuple[str, str] = ("zoo.loader", "load_pretrained_model"), root: Path = ROOT) -> list[tuple[str, str]]:
    """Follow the calls from ``start`` (a function) through the zoo's functions, each once; return the calls
    that climb back up: (caller, callee) with the callee's module on a higher floor than the caller's."""
    known = modules(root)
    up, seen, todo = [], {start}, [start]
    while todo:
        module, fn = todo.pop()
        defs, names = _functions(module, known)
        local = dict(names)
        for node in ast.walk(defs[fn]):  # imports inside the function
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in known:
                for a in node.names:
                    sub = f"{node.module}.{a.name}"
                    local[a.asname or a.name] = (sub, None) if sub in known else (node.module, a.name)
        for node in ast.walk(defs[fn]):
            if not isinstance(node, ast.Call):
                continue
            f, target = node.func, None
            if isinstance(f, ast.Name):
                if f.id in defs:
                    target = (module, f.id)
                elif f.id in local and local[f.id][1] is not None:
                    target = _definition(local[f.id][0], local[f.id][1], known)
            elif isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id in local:
                mod, attr = local[f.value.id]
                if attr is None:
                    target = _definition(mod, f.attr, known)
            if target is None or target in seen:
                continue
            seen.add(target)
            todo.append(target)
            if floor(target[0]) > floor(module):
                up.append((f"{module}.{fn}", ".".join(target)))
    return sorted(up)


def house_counts(root: Path = ROOT) -> dict[str, int]:
    """The three counts the house is held to (all 0)."""
    g = graph(root)
    return {"import_circles": len(circles(g)), "upward_imports": len(upward(g)), "load_path_climbs": len(climbs(root=root))}


__all__ = ["FLOORS", "circles", "climbs", "floor", "graph", "house_counts", "upward"]
