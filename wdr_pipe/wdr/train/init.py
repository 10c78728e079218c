"""``--init RUN``: start from another run's weights (``load_init``)."""
from __future__ import annotations

import logging
from typing import Any, Dict

import numpy as np

from ...errors import UserError
from ..runs.checkpoint import trained_weights
from ..runs.folder import open_run

log = logging.getLogger("wdr_pipe")


def load_init(model, init: str, label_ids: np.ndarray) -> Dict[str, Any]:
    """Load another run's best weights (else its last): every tensor of the same name and shape (BatchNorm's
    step counters left out), the head only when the two runs predict the same labels. Refused when not one
    backbone tensor fits (another backbone). Returns what ``config.json`` records of it."""
    run = open_run(init, "--init", kinds=("train",))
    path = run.best_else_last("--init")
    trained = trained_weights(path)
    same_labels = trained.label_ids == [int(i) for i in label_ids]
    own = {k: v for k, v in model.state_dict().items() if not is_counter(k)}
    take = {k: v for k, v in trained.state.items()
            if k in own and own[k].shape == v.shape and (same_labels or k.startswith("backbone."))}
    backbone = [k for k in own if k.startswith("backbone.")]
    loaded = [k for k in backbone if k in take]
    if not loaded:
        raise UserError(f"--init {init}: not one backbone tensor of it fits --backbone {model.cfg.backbone} (the "
                        f"run trained {trained.backbone}); initialise from a run of the same backbone")
    if len(loaded) < len(backbone) / 2:
        log.warning("--init %s: only %d of the %d backbone tensors fit (the run trained %s); the rest start from "
                    "their own initialisation", init, len(loaded), len(backbone), trained.backbone)
    model.load_state_dict(take, strict=False)
    log.info("initialised %d of %d tensors from %s (step %d; %d of %d backbone tensors)", len(take), len(own), path,
             trained.step, len(loaded), len(backbone))
    return {"path": str(run.root), "checkpoint": path.name, "step": trained.step, "tensors": len(take),
            "of": len(own), "backbone_tensors": len(loaded), "backbone_of": len(backbone),
            "not_loaded": sorted(set(own) - set(take))}


def is_counter(name: str) -> bool:
    """A BatchNorm step counter: state, not a weight; it says nothing about whether two models match."""
    return name.endswith("num_batches_tracked")


__all__ = ["is_counter", "load_init"]
