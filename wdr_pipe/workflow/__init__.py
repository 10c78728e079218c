"""``wdr-pipe run``: one TOML file describes the whole DAG (fetch, features, stats, training runs,
ensembles, evaluation, prediction, the report);
each step is the library's own stage, skipped by its own keys when its output exists.
Under torchrun rank 0 runs the steps other than training and every rank trains (``wdr.dist.Dist``)."""
from .config import RunConfig, load_config
from .plan import Outcome, Plan, Step, execute, make_plan, run_folders

__all__ = ["Outcome", "Plan", "RunConfig", "Step", "execute", "load_config", "make_plan", "run_folders"]
