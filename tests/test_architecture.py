"""The layout's rules, checked on the source: data flows down, the store layer alone knows paths.

cli -> demo -> workflow -> stages (pipeline) and model (wdr) -> cache -> imaging, checks, errors, progress, result;
the report (report) reads the model side's and the store's files.
"""
import ast
import importlib
import pkgutil
from pathlib import Path

import wdr_pipe

ROOT = Path(wdr_pipe.__file__).parent
# what each top-level part may import from inside wdr_pipe
ALLOWED = {
    "cli": {"cli", "checks", "demo", "workflow", "pipeline", "wdr", "report", "cache", "imaging", "errors", "progress", "result", ""},
    "demo": {"demo", "checks", "workflow", "pipeline", "wdr", "cache", "errors", "progress", "result", ""},
    "workflow": {"workflow", "checks", "pipeline", "wdr", "report", "cache", "errors", "progress", "result", ""},
    "pipeline": {"pipeline", "checks", "cache", "imaging", "errors", "progress", "result", ""},
    "wdr": {"wdr", "checks", "cache", "imaging", "errors", "progress", "result", ""},
    "report": {"report", "checks", "wdr", "cache", "errors", "result", ""},
    "cache": {"cache", "errors", "result", ""},
    "checks": {"errors"},
    "imaging": set(), "errors": set(), "progress": set(), "result": set(), "__init__": set(),
}
# file and folder names of the store (docs/store.md): only wdr_pipe/cache may spell them in code
STORE_FILES = {"_store.json", "_fetch.json", "_duplicates.parquet", "label_map.parquet", ".stats.json",
               ".failures.parquet", "config.json", "result.json", "index.faiss", "ids.parquet", "manifest.json"}
STORE_NAMES = {"index", "images", "features", "stats", "embeddings", "_search", ".parquet", *STORE_FILES}
# input data sets (not stores) have an images/ folder of their own,
# and a run folder (not a store; the model side's) has a config.json and a result.json of its own
INPUT_FOLDERS = {("demo/synth.py", "images"), ("pipeline/index/clothing.py", "images"),
                 ("wdr/checkpoint.py", "config.json"), ("wdr/checkpoint.py", "result.json"),
                 # run folders' files, spelled by the model side until the merge gives them one noun
                 ("wdr/ensemble.py", "stack_oof.parquet"), ("wdr/ensemble.py", "result.json"),
                 ("wdr/evaluate.py", "predictions.parquet"), ("wdr/scorer.py", "predictions.parquet")}
# the model side's JSON readers, until the merge moves them to cache.read_json (see docs/architecture.md)
JSON_READERS = {"pipeline/index/formats.py": "the user's FGVC5 JSON index: an input, not a store's file",
                "report/__init__.py": "model side, until the merge", "wdr/compare.py": "model side, until the merge",
                "wdr/runs.py": "model side, until the merge", "wdr/thresholds.py": "model side, until the merge",
                "wdr/checkpoint.py": "model side, until the merge", "wdr/evalfiles.py": "model side, until the merge"}


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


def _strings(node):
    """The text parts of a string constant or an f-string."""
    parts = [node] if isinstance(node, ast.Constant) else node.values if isinstance(node, ast.JoinedStr) else []
    return [c.value for c in parts if isinstance(c, ast.Constant) and isinstance(c.value, str)]


def _docstrings(tree):
    return {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and n.body
            and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}


def test_store_paths_are_built_only_in_the_cache_layer():
    """No code outside wdr_pipe/cache joins a store name onto a path (``PATH / f"{name}.parquet"``),
    renames a shard into one of its sibling files, or spells a store file's path in text
    (``f"images/{split}/_duplicates.parquet"``): it asks a ``Store`` (or ``cache``) instead."""
    bad = []
    for name, path, tree in modules():
        if part(name) == "cache":
            continue
        rel = str(path.relative_to(ROOT))
        where = lambda node: f"{path.relative_to(ROOT.parent)}:{node.lineno}"  # noqa: E731
        docs = _docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):  # PATH / "name" or PATH / f"...name"
                for text in _strings(node.right):
                    if (text in STORE_NAMES or any(text.endswith(s) for s in STORE_NAMES if s[0] in "._")) and \
                            (rel, text) not in INPUT_FOLDERS:
                        bad.append(f"{where(node)} builds a store path ({text!r})")
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") in ("with_name", "replace", "with_suffix"):
                for c in ast.walk(node):
                    if any(t.endswith((".stats.json", ".failures.parquet")) for t in _strings(c)):
                        bad.append(f"{where(node)} builds a store path ({_strings(c)[0]!r})")
            if isinstance(node, (ast.Constant, ast.JoinedStr)) and id(node) not in docs:
                for text in _strings(node):
                    spelled = [f for f in STORE_FILES if "/" + f in text and (rel, f) not in INPUT_FOLDERS]
                    if spelled:
                        bad.append(f"{where(node)} spells a store path in text ({spelled[0]!r})")
    assert not bad, "store paths outside wdr_pipe/cache:\n" + "\n".join(sorted(set(bad)))


def test_json_files_are_read_through_the_cache_layer():
    """``json.load`` / ``json.loads`` only in wdr_pipe/cache (``cache.read_json``: one error policy),
    but for the readers listed in ``JSON_READERS`` with their reason."""
    bad = []
    for name, path, tree in modules():
        rel = str(path.relative_to(ROOT))
        if part(name) == "cache" or rel in JSON_READERS:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in ("load", "loads") and \
                    isinstance(node.value, ast.Name) and node.value.id == "json":
                bad.append(f"{path.relative_to(ROOT.parent)}:{node.lineno} reads JSON itself")
    assert not bad, "JSON read outside wdr_pipe/cache (use cache.read_json):\n" + "\n".join(bad)


def test_no_module_over_400_lines():
    long = [f"{p.relative_to(ROOT.parent)}: {n}" for _, p, _ in modules()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 400]
    assert not long, long
