"""Scoring with trained runs: the one prediction loop and ``ModelScorer`` (``scorer.py``), the checks before
scoring (``checks.py``), evaluation, prediction, ensembles and the comparison table."""
