"""The Tune sample's training as an hpo-worker objective (no Ray): ``params["epochs"]``
epochs of :func:`.mlp.train`'s work, the last validation accuracy returned. Used by
benchmarks/bench_tune_cluster.py to compare Tune with the systemd Optuna workers on the
same objective."""

from __future__ import annotations

from typing import Any

import numpy as np

from .common import data, new_model, run_epoch


def objective(params: dict[str, Any]) -> float:
    x_tr, x_va, y_tr, y_va = data()
    classes = np.unique(y_tr)
    model = new_model(params)
    rng = np.random.default_rng(0)
    for _ in range(int(params.get("epochs", 1))):
        run_epoch(model, x_tr, y_tr, classes, rng, int(params.get("batch", 64)))
    return float(model.score(x_va, y_va))
