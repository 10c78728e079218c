"""``wdr-pipe run``: one TOML file describes the whole workflow (fetch, features, stats, training runs,
ensembles, evaluation, prediction, the report): ``schema.py`` types every key of the file,
``config.py`` reads and checks it, ``plan.py`` turns it into steps, each the library's own stage,
skipped by its own keys when its output exists. Under torchrun rank 0 runs the steps other than
training and every rank trains (``wdr.dist.Dist``)."""
from .config import WorkflowConfig, load_config, with_cluster
from .plan import Outcome, Plan, Step, evaluation_split, execute, make_plan, outcome_lines, run_folders

__all__ = ["Outcome", "Plan", "Step", "WorkflowConfig", "evaluation_split", "execute", "load_config", "make_plan",
           "outcome_lines", "run_folders", "with_cluster"]
