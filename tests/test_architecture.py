"""The layout's rules, checked on the source: data flows down, the store layer alone knows paths.

cli -> demo -> workflow -> stages (pipeline) and model (wdr) -> cache -> imaging, checks, errors, progress, result;
the report (report) reads the model side's and the store's files, and the page (browse) serves them.
"""
import ast
import importlib
import pkgutil
from pathlib import Path

import wdr_pipe

ROOT = Path(wdr_pipe.__file__).parent
# what each top-level part may import from inside wdr_pipe
ALLOWED = {
    "cli": {"cli", "checks", "demo", "workflow", "pipeline", "wdr", "report", "browse", "cache", "imaging", "errors", "progress",
            "result", ""},
    "demo": {"demo", "checks", "workflow", "pipeline", "wdr", "cache", "errors", "progress", "result", ""},
    "workflow": {"workflow", "checks", "pipeline", "wdr", "report", "cache", "errors", "progress", "result", ""},
    "pipeline": {"pipeline", "checks", "cache", "imaging", "errors", "progress", "result", ""},
    "wdr": {"wdr", "checks", "cache", "imaging", "errors", "progress", "result", ""},
    "report": {"report", "checks", "wdr", "cache", "errors", "result", ""},
    "browse": {"browse", "checks", "wdr", "cache", "imaging", "errors", "progress", "result", ""},
    "cache": {"cache", "errors", "result", ""},
    "checks": {"errors"},
    "imaging": set(), "errors": set(), "progress": set(), "result": set(), "__init__": set(),
}
# file and folder names of the store (docs/store.md): only wdr_pipe/cache may spell them in code
STORE_NAMES = {"index", "images", "features", "stats", "_store.json", "_fetch.json", "_duplicates.parquet",
               "label_map.parquet", ".stats.json", ".failures.parquet", "config.json",
               "embeddings", "_search", "index.faiss", "ids.parquet", "manifest.json"}
# input data sets (not stores) have an images/ folder of their own
# and a run folder (not a store) has a config.json of its own
INPUT_FOLDERS = {("demo/synth.py", "images"), ("pipeline/clothing.py", "images"), ("wdr/checkpoint.py", "config.json")}


def modules():
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        name = ".".join(rel.parts).removesuffix(".__init__")
        yield name, path, ast.parse(path.read_text(encoding="utf-8"))


def part(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ""


def internal_imports(name: str, path: Path, tree: ast.AST):
    """wdr_pipe modules imported by ``name``, absolute, with the line."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                if node.module is None:
                    for alias in node.names:
                        yield f"{target}.{alias.name}", node.lineno
                    continue
            else:
                target = node.module or ""
            if target.startswith("wdr_pipe"):
                yield target, node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("wdr_pipe"):
                    yield alias.name, node.lineno


def test_every_module_imports():
    for info in pkgutil.walk_packages(wdr_pipe.__path__, "wdr_pipe."):
        if info.name.endswith("__main__"):
            continue
        importlib.import_module(info.name)


def test_data_flows_down_and_pipeline_and_wdr_do_not_import_each_other():
    bad = []
    for name, path, tree in modules():
        src = part(name) or "__init__"
        src = src if src in ALLOWED else "__init__"
        for target, line in internal_imports(name, path, tree):
            dst = part(target)
            if dst == "__version__":
                continue
            if dst not in ALLOWED.get(src, set()) and dst != src:
                bad.append(f"{path.relative_to(ROOT.parent)}:{line} imports {target}")
    assert not bad, "imports against the layout:\n" + "\n".join(bad)


def test_no_import_cycle_between_modules():
    graph = {}
    for name, path, tree in modules():
        graph[name] = {t for t, _ in internal_imports(name, path, tree)}
    names = set(graph)

    def resolve(target):  # "wdr_pipe.cache.store.Store" -> the module "wdr_pipe.cache.store"
        while target and target not in names:
            target = target.rpartition(".")[0]
        return target

    edges = {n: {resolve(t) for t in ts} - {"", n} for n, ts in graph.items()}
    # a package's __init__ re-exporting its own modules is not a cycle of code
    edges = {n: {t for t in ts if not n.startswith(t + ".") and not t.startswith(n + ".")} for n, ts in edges.items()}
    state, cycle = {}, []

    def visit(n, stack):
        state[n] = 1
        for m in sorted(edges.get(n, ())):
            if state.get(m) == 1:
                cycle.append(stack[stack.index(m):] + [m])
            elif m not in state:
                visit(m, stack + [m])
        state[n] = 2

    for n in sorted(edges):
        if n not in state:
            visit(n, [n])
    assert not cycle, f"import cycle: {' -> '.join(cycle[0])}"


def test_store_paths_are_built_only_in_the_cache_layer():
    bad = []
    for name, path, tree in modules():
        if part(name) == "cache":
            continue
        for node in ast.walk(tree):
            # PATH / "images", PATH / f"{x}.stats.json", p.with_name(...".failures.parquet")
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
                for side in (node.right,):  # PATH / "name" or PATH / f"...name"
                    for c in ([side] if isinstance(side, ast.Constant) else
                              side.values if isinstance(side, ast.JoinedStr) else []):
                        if isinstance(c, ast.Constant) and isinstance(c.value, str) and (
                                c.value in STORE_NAMES or any(c.value.endswith(s) for s in STORE_NAMES if s[0] in "._")):
                            if (str(path.relative_to(ROOT)), c.value) not in INPUT_FOLDERS:
                                bad.append(f"{path.relative_to(ROOT.parent)}:{node.lineno} builds a store path ({c.value!r})")
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") in ("with_name", "replace", "with_suffix"):
                for c in ast.walk(node):
                    if isinstance(c, ast.Constant) and isinstance(c.value, str) and c.value.endswith(
                            (".stats.json", ".failures.parquet")):
                        bad.append(f"{path.relative_to(ROOT.parent)}:{node.lineno} builds a store path ({c.value!r})")
    assert not bad, "store paths outside wdr_pipe/cache:\n" + "\n".join(bad)


def test_no_module_over_400_lines():
    long = [f"{p.relative_to(ROOT.parent)}: {n}" for _, p, _ in modules()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 400]
    assert not long, long
