"""The import graph of sde_lab/ has no cycle (function-level imports included), and the
runner layers import one way: main.py -> run -> train/evaluate/classify -> sample ->
experiment."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _graph() -> dict[str, set[str]]:
    files = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
             for p in (ROOT / "sde_lab").rglob("*.py")}
    graph = {}
    for name, path in files.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sde_lab"):
                subs = {f"{node.module}.{a.name}" for a in node.names} & files.keys()
                deps |= subs or {node.module}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("sde_lab")}
        graph[name] = {d for d in deps if d in files and d != name}
    return graph


def _reaches(graph, start, goal) -> bool:
    seen, todo = set(), [start]
    while todo:
        node = todo.pop()
        if node == goal:
            return True
        if node not in seen:
            seen.add(node)
            todo.extend(graph.get(node, ()))
    return False


def test_no_import_cycles():
    graph = _graph()
    cycles = [(a, b) for a in graph for b in graph[a] if _reaches(graph, b, a)]
    assert not cycles, cycles


def test_runner_layers_are_one_way():
    graph = _graph()
    below = {"sde_lab.run": ["sde_lab.train", "sde_lab.evaluate", "sde_lab.sample",
                             "sde_lab.classify", "sde_lab.inverse_runner", "sde_lab.experiment"],
             "sde_lab.classify": ["sde_lab.train", "sde_lab.sample", "sde_lab.experiment"],
             "sde_lab.inverse_runner": ["sde_lab.state", "sde_lab.experiment"],
             "sde_lab.train": ["sde_lab.sample", "sde_lab.experiment"],
             "sde_lab.evaluate": ["sde_lab.sample", "sde_lab.experiment"],
             "sde_lab.sample": ["sde_lab.experiment"]}
    for upper, lowers in below.items():
        for lower in lowers:
            assert not _reaches(graph, lower, upper), f"{lower} imports {upper}"
    library = ["sde_lab.sdes", "sde_lab.samplers", "sde_lab.losses", "sde_lab.likelihood",
               "sde_lab.parameterization", "sde_lab.models", "sde_lab.metrics",
               "sde_lab.inverse", "sde_lab.anomaly"]
    for lib in library:
        for runner in ("sde_lab.experiment", "sde_lab.run", "sde_lab.train", "sde_lab.sweep"):
            assert not _reaches(graph, lib, runner), f"{lib} imports the runner ({runner})"
        source = "\n".join(p.read_text() for p in ROOT.glob(lib.replace(".", "/") + "*.py"))
        source += "\n".join(p.read_text() for p in (ROOT / lib.replace(".", "/")).glob("*.py"))
        assert "ml_collections" not in source, lib
