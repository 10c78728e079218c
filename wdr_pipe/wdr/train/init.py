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
    """Load another run's best weights (else its last): every tensor of the same name and shape, the head
    only when the two runs predict the same labels. Returns what ``config.json`` records of it."""
    run = open_run(init, "--init", kinds=("train",))
    path = run.best_else_last("--init")
    trained = trained_weights(path)
    same_labels = trained.label_ids == [int(i) for i in label_ids]
    own = model.state_dict()
    take = {k: v for k, v in trained.state.items()
            if k in own and own[k].shape == v.shape and (same_labels or k.startswith("backbone."))}
    if not any(k.startswith("backbone.") for k in take):
        raise UserError(f"--init {init}: its backbone ({trained.backbone}) does not match "
                        f"--backbone {model.cfg.backbone}; initialise from a run of the same backbone")
    model.load_state_dict(take, strict=False)
    log.info("initialised %d of %d tensors from %s (step %d)", len(take), len(own), path, trained.step)
    return {"path": str(run.root), "checkpoint": path.name, "step": trained.step, "tensors": len(take),
            "of": len(own), "not_loaded": sorted(set(own) - set(take))}


__all__ = ["load_init"]
