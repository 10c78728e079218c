"""The layout's rules, checked on the source: data flows down, the store layer alone knows paths.

cli -> demo -> workflow -> stages (pipeline) and model (wdr) -> cache -> imaging, checks, errors, progress, result;
the report (report) reads the model side's and the store's files; wdr uses pipeline's configs and pure kernels
only. Inside wdr the rooms are stacked: metrics (numpy only) at the bottom; data, model and dist; runs;
embed; score; train at the top, imported by nothing but cli and workflow. The page (browse) serves
what the stages stored. The tests are laid out as the package is.
"""
import ast
import importlib
import pkgutil
from pathlib import Path

import wdr_pipe

ROOT = Path(wdr_pipe.__file__).parent
TESTS = Path(__file__).resolve().parent  # laid out as ROOT is
# what each top-level part may import from inside wdr_pipe
ALLOWED = {
    "cli": {"cli", "checks", "demo", "workflow", "pipeline", "wdr", "report", "browse", "cache", "imaging", "errors", "progress",
            "result", ""},
    "demo": {"demo", "checks", "workflow", "pipeline", "wdr", "cache", "errors", "progress", "result", ""},
    "workflow": {"workflow", "checks", "pipeline", "wdr", "report", "cache", "errors", "progress", "result", ""},
    "pipeline": {"pipeline", "checks", "cache", "imaging", "errors", "progress", "result", ""},
    "wdr": {"wdr", "checks", "pipeline", "cache", "imaging", "errors", "progress", "result", ""},
    "report": {"report", "checks", "wdr", "cache", "imaging", "errors", "result", ""},
    "browse": {"browse", "checks", "wdr", "cache", "imaging", "errors", "progress", "result", ""},
    "cache": {"cache", "errors", "result", ""},
    "checks": {"errors"},
    "imaging": set(), "errors": set(), "progress": set(), "result": set(), "__init__": set(),
}
# file and folder names of the store (docs/store.md): only wdr_pipe/cache may spell them in code
STORE_FILES = {"_store.json", "_fetch.json", "_duplicates.parquet", "label_map.parquet", ".stats.json",
               ".failures.parquet", "config.json", "result.json", "vectors.npy", "ids.parquet", "manifest.json"}
STORE_NAMES = {"index", "images", "features", "stats", "embeddings", "_search", ".parquet", *STORE_FILES}
# input data sets (not stores) have an images/ folder of their own,
# and a run folder (not a store) has files of its own, named in wdr/runs/ alone
INPUT_FOLDERS = {("demo/synth.py", "images"), ("pipeline/index/clothing.py", "images"),
                 ("wdr/runs/folder.py", "config.json"), ("wdr/runs/folder.py", "result.json"),
                 ("wdr/runs/evalfiles.py", "predictions.parquet"), ("wdr/runs/folder.py", "stack_oof.parquet"),
                 # the page keeps the run's probabilities of the stored images in RUN/browse/ (its own folder)
                 ("browse/kept.py", ".parquet")}
# JSON that is not a store's or a run's file (those go through cache.read_json)
JSON_READERS = {"pipeline/index/formats.py": "the user's FGVC5 JSON index: an input, not a store's file",
                "wdr/runs/folder.py": "metrics.jsonl: JSON Lines, read line by line (a killed run's last line may be cut)",
                "wdr/runs/evalfiles.py": "a Parquet file's key-value metadata, not a file",
                "wdr/metrics/thresholds.py": "thresholds.json keeps label ids in column order; metrics/ imports numpy only"}
# what wdr may use of pipeline: its configs and pure kernels, never a stage
WDR_FROM_PIPELINE = {"wdr_pipe.pipeline.configs": {"FeatureConfig", "FetchConfig"},
                     "wdr_pipe.pipeline.features.stage": {"compute_batch"},
                     "wdr_pipe.pipeline.features.hog": None, "wdr_pipe.pipeline.features.color": None}  # None: any name
# the rooms of wdr, bottom up: a room imports its own modules and those of rooms below it
# (data, model and dist share a level); wdr/checks.py and wdr/__init__.py belong to every room
WDR_LEVELS = {"metrics": 0, "data": 1, "model": 1, "dist": 1, "runs": 2, "embed": 3, "score": 4, "train": 5}


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


def wdr_room(name: str) -> str:
    """``wdr_pipe.wdr.score.scorer`` -> ``score``; ``wdr_pipe.wdr.checks`` / ``wdr_pipe.wdr`` -> ``""``."""
    parts = name.split(".")
    if parts[:2] != ["wdr_pipe", "wdr"] or len(parts) < 3:
        return ""
    return parts[2] if parts[2] in WDR_LEVELS else ""


def test_wdr_uses_only_pipelines_configs_and_pure_kernels():
    bad = []
    for name, path, tree in modules():
        if part(name) != "wdr":
            continue
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom):
                continue
            target = next((t for t, line in internal_imports(name, path, ast.Module([node], [])) if
                           part(t) == "pipeline"), None)
            if target is None:
                continue
            allowed = WDR_FROM_PIPELINE.get(target, set())
            names = {a.name for a in node.names}
            if target not in WDR_FROM_PIPELINE or (allowed is not None and not names <= allowed):
                bad.append(f"{path.relative_to(ROOT.parent)}:{node.lineno} imports {sorted(names)} from {target}")
    assert not bad, "wdr imports more of pipeline than its configs and pure kernels:\n" + "\n".join(bad)


def test_wdr_rooms_import_only_rooms_below_them():
    bad = []
    for name, path, tree in modules():
        src = wdr_room(name)
        for target, line in internal_imports(name, path, tree):
            dst = wdr_room(target)
            if dst == "train" and src != "train" and part(name) not in ("cli", "workflow"):
                bad.append(f"{path.relative_to(ROOT.parent)}:{line} imports {target} (only cli and workflow may)")
            if part(name) != "wdr" or not src or not dst or dst == src:
                continue
            if WDR_LEVELS[dst] >= WDR_LEVELS[src] and not (WDR_LEVELS[dst] == WDR_LEVELS[src] == 1):
                bad.append(f"{path.relative_to(ROOT.parent)}:{line}: {src} imports {target}, a room not below it")
            if src == "metrics":
                bad.append(f"{path.relative_to(ROOT.parent)}:{line}: metrics imports {target}")
    assert not bad, "imports against the rooms of wdr:\n" + "\n".join(bad)


def test_metrics_import_no_torch_and_nothing_of_wdr_but_themselves():
    bad = []
    for name, path, tree in modules():
        if wdr_room(name) != "metrics":
            continue
        for node in ast.walk(tree):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            bad += [f"{path.relative_to(ROOT.parent)}:{node.lineno} imports {m}" for m in mods
                    if m.split(".")[0] == "torch"]
        bad += [f"{path.relative_to(ROOT.parent)}:{line} imports {t}" for t, line in internal_imports(name, path, tree)
                if part(t) == "wdr" and wdr_room(t) != "metrics"]
    assert not bad, "metrics must stay numpy only:\n" + "\n".join(bad)


def test_tests_mirror_the_package_and_their_module_names_are_unique():
    """tests/ is laid out as wdr_pipe/ is: the tests of wdr_pipe/<room>/ are in tests/<room>/, so every folder
    of tests/ that holds Python files is a folder of the package. tests/ has no __init__.py, so pytest imports
    each test module by its base name: two with one name would not both import."""
    folders = sorted({p.parent.relative_to(TESTS) for p in TESTS.rglob("*.py")})
    strays = [f"tests/{f}/" for f in folders if not (ROOT / f / "__init__.py").is_file()]
    assert not strays, f"test folders that are no folder of wdr_pipe/ (name one after the room it tests): {strays}"
    names = [p.name for p in TESTS.rglob("*.py") if p.name != "conftest.py"]
    twice = sorted({n for n in names if names.count(n) > 1})
    assert not twice, f"test modules that share a name (rename one): {twice}"
