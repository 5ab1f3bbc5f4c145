"""Evaluation stage: metrics on frozen features (metrics.py: kNN, effective rank, the linear probe, the training run's
held-out monitor) and offline evaluation of checkpoints (offline.py: labelled data sets, the feature cache, loading a
trained network, ``fusedssl eval`` runs). The training-time online probe is engine/probe.py."""

from .metrics import (
    LinearHead,
    ProbeSettings,
    effective_rank,
    extract,
    features,
    few_shot_bank,
    held_out,
    knn_accuracy,
    linear_probe,
)
from .offline import (
    BundledSet,
    FolderSet,
    LabelledSet,
    Trained,
    cached_features,
    load_network,
    resolve_checkpoint,
    run,
    table,
    write_results,
)

__all__ = ["LinearHead", "ProbeSettings", "effective_rank", "extract", "features", "few_shot_bank", "held_out",
           "knn_accuracy", "linear_probe", "BundledSet", "FolderSet", "LabelledSet", "Trained", "cached_features",
           "load_network", "resolve_checkpoint", "run", "table", "write_results"]
