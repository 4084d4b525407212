"""The library's rooms depend one way: no import cycle among tinyfusion's modules, counting the imports inside
functions too (a lazy import that only hides a cycle is still one)."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "tinyfusion"


def import_graph():
    """{module: the tinyfusion modules it imports anywhere in its file}."""
    mods = {"tinyfusion." + ".".join(f.relative_to(ROOT).with_suffix("").parts): f for f in ROOT.rglob("*.py")}
    mods = {m.removesuffix(".__init__"): f for m, f in mods.items()}
    graph = {m: set() for m in mods}
    for m, f in mods.items():
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tinyfusion"):
                graph[m] |= {t for t in (node.module, *(f"{node.module}.{a.name}" for a in node.names)) if t in mods}
            elif isinstance(node, ast.Import):
                graph[m] |= {a.name for a in node.names if a.name in mods}
        graph[m].discard(m)
    return graph


def cycles(graph):
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))
    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_cycles_finds_a_planted_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_in_the_library():
    graph = import_graph()
    assert "tinyfusion.images" in graph["tinyfusion.evaluator"]   # the helpers moved down a floor
    assert "tinyfusion.metrics" not in graph["tinyfusion.evaluator"]
    assert "tinyfusion.speed" not in graph["tinyfusion.pruning.width"]
    assert "tinyfusion.pruning.random" not in graph["tinyfusion.pruning.scores"]
    assert cycles(graph) == [], f"modules that import each other: {cycles(graph)}"
