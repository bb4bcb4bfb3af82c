"""No import cycles inside ugs_d2.

The graph is read from the source with ``ast`` (nothing is imported), one node per module of
``ugs_d2``. An edge ``a -> b`` is any ``import`` / ``from ... import`` in ``a`` that names ``b``
(or a name inside ``b``), plus ``b``'s enclosing packages, whose ``__init__`` Python runs first
(except the packages ``a`` itself lives in: those are being imported already).

Imports inside functions count as edges too. A function-level import is fine to keep an
optional or heavy dependency lazy (detectron2's evaluator, wandb, a benchmark only one command
needs), but not to dodge a cycle: a cycle closed by a function-level import is still a cycle
(it decides which module must be imported first, and breaks when someone moves the import to
the top). So the test fails on a cycle in the full graph and says which edges are the
function-level ones, which were the ones dodging it.

The dependency direction (docs/architecture.md; ``LAYERS`` below): entry points (``train``, ``cli``) -> ``engine`` /
``harness`` / ``inference`` -> ``modeling`` / ``data`` / ``evaluation`` -> ``bins`` /
``losses`` / ``boxes`` / ``compat`` / ``fileio``.
"""
import ast
import os
from typing import Dict, List, Set

import pytest

PACKAGE = "ugs_d2"
ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), PACKAGE)

Graph = Dict[str, Dict[str, str]]  # module -> {imported module: "module" | "function"}


def package_modules(root: str = ROOT, package: str = PACKAGE) -> Dict[str, str]:
    """Dotted module name -> file path, for every ``.py`` file under ``root``."""
    modules = {}
    for directory, _, files in os.walk(root):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(directory, name)
            parts = [package] + os.path.relpath(path, root)[: -len(".py")].split(os.sep)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def _imported_names(module: str, is_package: bool, node: ast.AST) -> List[str]:
    """Dotted names an import statement may refer to (a module, or a name inside one)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:  # relative: resolve against the importing module's package
        parts = module.split(".") if is_package else module.split(".")[:-1]
        parts = parts[: len(parts) - (node.level - 1)]
        base = ".".join(parts + ([base] if base else []))
    return [base] + [f"{base}.{alias.name}" for alias in node.names]


def _targets(name: str, module: str, modules: Dict[str, str]) -> Set[str]:
    """The package modules that importing ``name`` from ``module`` executes."""
    while name and name not in modules:
        name = name.rpartition(".")[0]  # a function or class inside a module -> the module
    targets = set()
    parts = name.split(".") if name else []
    for i in range(1, len(parts) + 1):
        target = ".".join(parts[:i])
        # the importer's own enclosing packages are already being imported: no edge
        if target != module and not module.startswith(target + "."):
            targets.add(target)
    return targets


def import_graph(modules: Dict[str, str]) -> Graph:
    """``{module: {imported: "module" | "function"}}``; "module" wins when both occur."""
    graph: Graph = {}
    for module, path in modules.items():
        with open(path) as f:
            tree = ast.parse(f.read(), filename=path)
        edges: Dict[str, str] = {}

        def visit(node: ast.AST, level: str) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    for name in _imported_names(module, path.endswith("__init__.py"), child):
                        for target in _targets(name, module, modules):
                            if edges.get(target) != "module":
                                edges[target] = level
                inner = "function" if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) else level
                visit(child, inner)

        visit(tree, "module")
        graph[module] = edges
    return graph


def find_cycles(graph: Graph) -> List[List[str]]:
    """One cycle (``[a, b, ..., a]``) per strongly connected component with more than one module
    (Tarjan's algorithm); [] when the graph is acyclic."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    components: List[List[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, {})):
            if w not in index:
                connect(w)
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
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return [_cycle_in(graph, set(c)) for c in components]


def _cycle_in(graph: Graph, component: Set[str]) -> List[str]:
    """A shortest cycle through the component's first module (breadth-first search)."""
    start = min(component)
    parents = {start: None}
    frontier = [start]
    while frontier:
        following = []
        for v in frontier:
            for w in sorted(graph[v]):
                if w == start:
                    path = [v]
                    while parents[path[-1]] is not None:
                        path.append(parents[path[-1]])
                    return [start] + path[::-1][1:] + [start] if len(path) > 1 else [start, v, start]
                if w in component and w not in parents:
                    parents[w] = v
                    following.append(w)
        frontier = following
    raise AssertionError(f"no cycle through {start}")  # a component of size > 1 has one


def describe(graph: Graph, cycle: List[str]) -> str:
    """``a -> b -> (in a function) c -> a``."""
    out = [cycle[0]]
    for a, b in zip(cycle, cycle[1:]):
        out.append(("-(in a function)-> " if graph[a][b] == "function" else "-> ") + b)
    return " ".join(out)


# --- the checker on hand-made graphs -------------------------------------------------------


def test_find_cycles_by_hand():
    acyclic = {"a": {"b": "module"}, "b": {"c": "function"}, "c": {}}
    assert find_cycles(acyclic) == []
    cyclic = {"a": {"b": "module"}, "b": {"c": "module"}, "c": {"a": "function"}, "d": {"a": "module"}}
    assert find_cycles(cyclic) == [["a", "b", "c", "a"]]
    assert describe(cyclic, ["a", "b", "c", "a"]) == "a -> b -> c -(in a function)-> a"
    two = {"a": {"b": "module"}, "b": {"a": "module"}, "c": {"d": "module"}, "d": {"c": "module"}}
    assert find_cycles(two) == [["a", "b", "a"], ["c", "d", "c"]]


def test_graph_reads_relative_function_level_and_parent_package_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .leaf import f\n")
    (pkg / "sub" / "leaf.py").write_text("import os\n\ndef f():\n    from pkg import top\n")
    (pkg / "top.py").write_text("from pkg.sub.leaf import f\n")
    graph = import_graph(package_modules(str(pkg), "pkg"))
    assert graph["pkg.sub"] == {"pkg.sub.leaf": "module"}
    assert graph["pkg.sub.leaf"] == {"pkg.top": "function"}  # not pkg or pkg.sub: its own parents
    assert graph["pkg.top"] == {"pkg.sub": "module", "pkg.sub.leaf": "module"}  # sub/__init__ runs
    assert find_cycles(graph) == [["pkg.sub", "pkg.sub.leaf", "pkg.top", "pkg.sub"]]


# --- the package ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def graph() -> Graph:
    return import_graph(package_modules())


def test_graph_sees_the_package(graph):
    assert len(graph) > 40
    assert graph["ugs_d2.losses"] == {"ugs_d2.bins": "module"}


def test_no_import_cycles_below_the_command_line(graph):
    """The library (everything but ``ugs_d2.cli``) is acyclic on its own."""
    library = {m: {t: k for t, k in edges.items() if not t.startswith("ugs_d2.cli")}
               for m, edges in graph.items() if not m.startswith("ugs_d2.cli")}
    cycles = find_cycles(library)
    assert not cycles, "import cycles in ugs_d2 outside cli/:\n" + "\n".join(describe(library, c) for c in cycles)


#: the dependency direction, top to bottom: a module may import its own layer or the ones below
LAYERS = (
    ("entry points", ("ugs_d2.train", "ugs_d2.train_net", "ugs_d2.cli")),
    # bench: the benchmarks ugs-bench runs (they train and predict); analysis: what the
    # commands report about runs and datasets
    ("engine / harness", ("ugs_d2.engine", "ugs_d2.harness", "ugs_d2.inference", "ugs_d2.config",
                          "ugs_d2.bench", "ugs_d2.analysis")),
    ("modeling / data / evaluation", ("ugs_d2.modeling", "ugs_d2.data", "ugs_d2.evaluation", "ugs_d2.anchors")),
    ("base", ("ugs_d2.bins", "ugs_d2.losses", "ugs_d2.boxes", "ugs_d2.compat", "ugs_d2.fileio",
              "ugs_d2.interrupts", "ugs_d2.environment", "ugs_d2.schema", "ugs_d2.projects")),
)


def layer_of(module: str) -> int:
    """Index in LAYERS (0 = top); the package ``ugs_d2`` itself is below everything."""
    if module == PACKAGE:
        return len(LAYERS)
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    raise AssertionError(f"{module}: in no layer of tests/test_import_graph.py's LAYERS")


def upward_imports(graph: Graph) -> List[str]:
    return [
        f"{m} ({LAYERS[layer_of(m)][0]}) -> {t} ({LAYERS[layer_of(t)][0]})"
        for m, edges in sorted(graph.items())
        for t in sorted(edges)
        if layer_of(t) < layer_of(m)
    ]


def test_upward_imports_by_hand():
    graph = {"ugs_d2.bins": {}, "ugs_d2.losses": {"ugs_d2.bins": "module"}, "ugs_d2.modeling.stage": {"ugs_d2.losses": "module"}}
    assert upward_imports(graph) == []
    graph["ugs_d2.bins"] = {"ugs_d2.engine.trainer": "function"}
    assert upward_imports(graph) == ["ugs_d2.bins (base) -> ugs_d2.engine.trainer (engine / harness)"]


def test_imports_point_down_the_layers(graph):
    upward = upward_imports(graph)
    assert not upward, "imports against the dependency direction:\n" + "\n".join(upward)


def test_no_import_cycles(graph):
    cycles = find_cycles(graph)
    assert not cycles, "import cycles in ugs_d2 (break each by moving the shared code down):\n" + "\n".join(
        describe(graph, c) for c in cycles
    )
