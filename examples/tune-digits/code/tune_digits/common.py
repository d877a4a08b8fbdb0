"""The digits MLP without Ray: data, model and one epoch of ``partial_fit``, shared by the
Tune trainable (:mod:`.mlp`) and the hpo-worker objective (:mod:`.plain`), so that both run
the same work per epoch (benchmarks/bench_tune_cluster.py compares them)."""

from __future__ import annotations

import warnings
from typing import Any

from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler


def data():
    x, y = load_digits(return_X_y=True)
    x_tr, x_va, y_tr, y_va = train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)
    scaler = StandardScaler().fit(x_tr)
    return scaler.transform(x_tr), scaler.transform(x_va), y_tr, y_va


def new_model(config: dict[str, Any]) -> MLPClassifier:
    return MLPClassifier(hidden_layer_sizes=(int(config["hidden"]),), alpha=float(config["alpha"]),
                         learning_rate_init=float(config["lr"]), random_state=0)


def run_epoch(model: MLPClassifier, x_tr, y_tr, classes, rng, batch: int = 64) -> None:
    """One pass over the training data in shuffled mini-batches."""
    order = rng.permutation(len(y_tr))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for i in range(0, len(order), batch):
            idx = order[i:i + batch]
            model.partial_fit(x_tr[idx], y_tr[idx], classes=classes)

