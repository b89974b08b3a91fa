"""Offline evaluation: full-catalogue ranking metrics and cross-platform baselines."""

from interest_model.evaluation.baselines import (
    BASELINES,
    Baseline,
    PairTrainData,
    make_baseline,
    tune,
)
from interest_model.evaluation.metrics import (
    METRICS,
    bootstrap_ci,
    evaluate,
    paired_ratio_ci,
    rank_metrics,
)

__all__ = [
    "BASELINES",
    "METRICS",
    "Baseline",
    "PairTrainData",
    "bootstrap_ci",
    "evaluate",
    "make_baseline",
    "paired_ratio_ci",
    "rank_metrics",
    "tune",
]
