"""Every option of the model and dev commands, given a boundary value, works or fails fast with one line.

The walk of tests/cli/test_options.py (tests/cli/optionwalk.py), over the commands after the store: for
every option and argument of ``train``, ``thresholds``, ``evaluate``, ``predict`` (a split and
image files), ``ensemble``, ``compare``, ``report``, ``embed``, ``similar``, ``run``, ``synth``,
``serve`` and ``demo`` it tries 0, -1, a huge number, an empty string and nan, and switches each
flag on once. Each case must end within a bound, exit 0 (it worked) or 1/2 (refused) with
exactly one ``Error:`` line, and never show a traceback. A value that is accepted costs little:
a store of 20 generated images at 40 px, timm's ``test_efficientnet``, one epoch of 4-image
batches at 32 px on the CPU, and two finished runs trained once by the fixture. Every option
gets all the values (a refusal costs milliseconds): about 670 cases in 15 s, and ``train
--compile``'s first build, 40 s more on a quiet 2-core machine where torch has no compile cache.
"""
from __future__ import annotations

import shutil
import time

import pytest

from helpers import drawn_store
from optionwalk import VALUES, error_line, problems, range_tables, walk

CASE_SECONDS = 60   # a refusal takes well under a second; a tiny run that works, one or two
COMPILE_SECONDS = 240  # train --compile: torch.compile's first build on the CPU, 40 s on a quiet machine
WALK_SECONDS = 420  # the whole walk, in one subprocess
TINY = ["--backbone", "test_efficientnet", "--epochs", "1", "--batch-size", "4", "--image-size", "32",
        "--workers", "0", "--device", "cpu", "--checkpoint-every", "0"]
SCORING = ["--device", "cpu", "--workers", "0", "--batch-size", "4"]


@pytest.fixture(scope="module")
def model_inputs(tmp_path_factory):
    """Folders for the walk: a store with features, statistics and embeddings, two finished runs
    (the first evaluated), an image file, and a ``run`` project (config + store) to copy."""
    from wdr_pipe.wdr.embed.stage import EmbedSpec, compute_embeddings
    from wdr_pipe.wdr.score.evaluate import EvalConfig, evaluate
    from wdr_pipe.wdr.train.loop import train
    from wdr_pipe.wdr.train.config import TrainConfig

    root = tmp_path_factory.mktemp("walk-model")
    store, records = drawn_store(root, {"train": 8, "validation": 8, "test": 4}, seed=0, size_range=(64, 96),
                                 size=40, shard_size=8)
    tiny = dict(backbone="test_efficientnet", epochs=1, batch_size=4, image_size=32, loader_workers=0, device="cpu",
                checkpoint_every=0)
    runs = []
    for seed in (0, 1):
        out = root / "runs" / f"tiny{seed}"
        train(TrainConfig(store=str(store), out=str(out), seed=seed, parts="deep,wide,recurrent", **tiny))
        runs.append(out)
    evaluate(EvalConfig(store=str(store), run=str(runs[0]), device="cpu", loader_workers=0, batch_size=4, saliency=2))
    compute_embeddings(store, EmbedSpec(run=str(runs[0])), device="cpu", batch_size=4)
    project = root / "project"
    shutil.copytree(store, project / "store")
    (project / "wdr.toml").write_text(
        'store = "store"\nruns = "runs"\nscheduler = "inline"\n\n[features]\nhog_size = 64\n\n[stats]\n'
        'epochs = 200\n\n[train.tiny]\n' + "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in tiny.items()))
    train_ids = [r.image_id for r in records if r.split == "train"]
    image = root / "data" / next(r.path for r in records if r.split == "test")
    return dict(store=store, runs=runs, project=project, image=image, image_id=str(train_ids[0]))


def spec(inputs):
    store, (run, run2) = str(inputs["store"]), map(str, inputs["runs"])
    bases = {
        "train": ["train", "--store", "{store}", "--out", "{new}", *TINY],
        "thresholds": ["thresholds", "--run", "{run}", "--device", "cpu", "--workers", "0"],
        "evaluate": ["evaluate", "--store", store, "--run", "{run}", *SCORING, "--saliency", "0", "--no-report"],
        "predict": ["predict", "--store", store, "--run", run, "--out", "{new}.csv", *SCORING],
        "predict#images": ["predict", str(inputs["image"]), "--run", run, "--device", "cpu"],
        "ensemble": ["ensemble", run, run2, "--out", "{new}", "--store", store, *SCORING],
        "compare": ["compare", run, run2],
        "report": ["report", "--run", "{run}", "--store", store],
        "embed": ["embed", "--store", "{store}", "--run", run, "--device", "cpu", "--batch-size", "4"],
        "similar": ["similar", inputs["image_id"], "--store", "{store}", "-k", "3", "--device", "cpu"],
        "run": ["run", "{project}/wdr.toml"],
        "synth": ["synth", "{new}", "--train", "2", "--validation", "1", "--test", "1"],
        "serve": ["serve", "{store}", "--port", "0"],
        "demo": ["demo", "--out", "{new}", "--train", "16", "--validation", "4", "--test", "1", "--size", "32",
                 "--image-size", "32", "--epochs", "1", "--workers", "1"],
    }
    skip = [
        # serve: a value it accepts serves until Ctrl-C (port 0: any free port; host 0 and '': every interface)
        ["serve", "port", "0"], ["serve", "host", "0"], ["serve", "host", ""],
        # demo: a value it accepts starts the whole demo (a server, fetch, five trainings: minutes),
        # so only the values it should refuse are tried; --out takes any folder name
        *[["demo", "out", v] for v in ("0", "-1", "9" * 24, "nan")],
    ]
    templates = {"{store}": store, "{run}": run, "{project}": str(inputs["project"])}
    return {"bases": bases, "templates": templates, "values": VALUES, "skip": skip, "flags": True,
            "seconds": CASE_SECONDS, "seconds_for": {"train compile": COMPILE_SECONDS}}


@pytest.mark.slow
def test_every_model_option_with_boundary_values_works_or_fails_fast_in_one_line(model_inputs, tmp_path):
    t0 = time.monotonic()
    results = walk(spec(model_inputs), tmp_path, WALK_SECONDS)
    print(f"{len(results)} cases in {time.monotonic() - t0:.1f} s")
    found = problems(results)
    assert not found, "\n".join(found)
    # every option and argument of every walked command, with one value at least
    from wdr_pipe.cli import cli

    walked = {(r["command"].split("#")[0], r["option"]) for r in results}
    for label in spec(model_inputs)["bases"]:
        cmd = cli.commands[label.split("#")[0]]
        assert {p.name for p in cmd.params} - {"help"} <= {o for c, o in walked if c == cmd.name}, label
    # a refused value is named with its option and the accepted range, on the one line
    by = {(r["command"], r["option"], r["value"]): r for r in results}
    for key, words in {("train", "lr", "nan"): ["'--lr'", "nan", "0<x<=10"],
                       ("train", "image_size", "9" * 24): ["'--image-size'", "16<=x<=4096"],
                       ("train", "seed", "-1"): ["'--seed'", "-1", "0<=x<=4294967295"],
                       ("train", "head_dropout", "9" * 24): ["'--head-dropout'", "0<=x<1"],
                       ("train", "pos_weight", "0"): ["--pos-weight", "'0'", "more than 0 up to 1,000,000", "stats"],
                       ("train", "device", "0"): ["--device '0'", "cuda:N"],
                       ("evaluate", "workers", "9" * 24): ["'--workers'", "0<=x<=64"],
                       ("ensemble", "out", ""): ["'--out'", "empty path"],
                       ("similar", "k", "0"): ["'-k'", "1<=x<=10000"],
                       ("demo", "n_train", "9" * 24): ["'--train'", "16<=x<=1000000"]}.items():
        assert by[key]["code"] in (1, 2) and all(w in error_line(by[key]) for w in words), (key, error_line(by[key]))


def test_every_ranged_option_refuses_what_its_config_refuses():
    """The click type of each option is built from its config's ``Bound``: the same ends, open or closed."""
    from wdr_pipe.cli import cli

    for command, tables in range_tables().items():
        params = {o: p for p in cli.commands[command].params for o in p.opts}
        for table in tables:
            for bound in (b for b in table.values() if b.option.startswith("-")):
                if bound.option == "--pos-weight":  # text: a number K or 'stats', read by TrainConfig
                    continue
                t = params[bound.option].type
                assert (t.min, t.max, t.min_open, t.max_open) == (bound.lo, bound.hi, bound.lo_open, bound.hi_open), \
                    (command, bound.option)


# -- the library refuses the same values ------------------------------------------------

def configs():
    """table name -> (config class, the arguments it needs besides the field tried)."""
    from wdr_pipe.wdr.embed.stage import EmbedSpec
    from wdr_pipe.wdr.score.ensemble import EnsembleConfig
    from wdr_pipe.wdr.score.evaluate import EvalConfig
    from wdr_pipe.wdr.model.network import ModelConfig
    from wdr_pipe.wdr.score.predict import PredictConfig
    from wdr_pipe.wdr.train.config import TrainConfig

    return {"MODEL_BOUNDS": (ModelConfig, {}), "TRAIN_BOUNDS": (TrainConfig, {"store": "s", "out": "o"}),
            "EVAL_BOUNDS": (EvalConfig, {"store": "s", "run": "r"}),
            "PREDICT_BOUNDS": (PredictConfig, {"store": "s", "run": "r", "out": "o"}),
            "ENSEMBLE_BOUNDS": (EnsembleConfig, {"runs": ("a", "b"), "out": "o"}),
            "EMBED_BOUNDS": (EmbedSpec, {"run": "r"})}


@pytest.mark.parametrize("table", ["MODEL_BOUNDS", "TRAIN_BOUNDS", "EVAL_BOUNDS", "PREDICT_BOUNDS", "ENSEMBLE_BOUNDS",
                                   "EMBED_BOUNDS"])
def test_every_model_config_refuses_each_end_of_its_ranges_by_option_value_and_range(table):
    from wdr_pipe.errors import UserError
    from wdr_pipe.wdr import checks

    cls, needs = configs()[table]
    for field, bound in getattr(checks, table).items():
        step = 1 if bound.integer else 1e-3
        # warm-up epochs must also be fewer than --epochs: give it room at the top end
        room = {"epochs": checks.TRAIN_BOUNDS["epochs"].hi} if field == "warmup_epochs" else {}
        top = bound.hi - step if field == "warmup_epochs" else bound.hi
        outside = [bound.hi if bound.hi_open else bound.hi + step, bound.lo if bound.lo_open else bound.lo - step,
                   float("nan"), "3", True] + ([] if bound.optional else [None])
        for value in outside:
            with pytest.raises(UserError) as e:
                cls(**needs, **room, **{field: value})
            assert f"{field} {value!r}" in str(e.value) and bound.option in str(e.value), str(e.value)
            assert bound.text() in str(e.value) and "\n" not in str(e.value), str(e.value)
        inside = [bound.hi - step if bound.hi_open else top, bound.lo + step if bound.lo_open else bound.lo]
        for value in inside + ([None] if bound.optional else []):
            cls(**needs, **room, **{field: value})  # both ends are accepted
