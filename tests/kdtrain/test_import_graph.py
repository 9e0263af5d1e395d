"""kdtrain's modules import each other without a circle (imports inside functions count too)."""

import ast
import os

import kdtrain

ROOT = os.path.dirname(os.path.dirname(kdtrain.__file__))


def _modules() -> dict:
    """{dotted module name: path} of every kdtrain source file."""
    out = {}
    for folder, _, files in os.walk(os.path.dirname(kdtrain.__file__)):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                dotted = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                out[dotted.removesuffix(".__init__")] = path
    return out


def import_graph() -> dict:
    """{module: set of kdtrain modules it imports}. ``from P import x`` imports P.x when that is a module."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(open(path).read(), path)):
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                # This graph reads absolute imports only, which is all kdtrain uses.
                assert node.level == 0, f"{path}:{node.lineno}: a relative import"
                for a in node.names:
                    sub = f"{node.module}.{a.name}"
                    edges.add(sub if sub in modules else node.module)
        graph[name] = {e for e in edges if e in modules and e != name}
    return graph


def find_cycle(graph: dict):
    """One import circle as a list of modules, or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_circle():
    graph = import_graph()
    assert "kdtrain.demo.common" in graph["kdtrain.demo.label_scarce"]  # the graph sees the demo's imports
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_a_circle_is_found():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
