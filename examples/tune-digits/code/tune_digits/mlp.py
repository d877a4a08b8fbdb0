"""A Tune objective that needs no download: scikit-learn's MLPClassifier trained epoch by
epoch (``partial_fit``) on the handwritten-digits data bundled with scikit-learn.

Each epoch reports the validation accuracy and a checkpoint (the pickled model and the
epoch), so ASHA can stop a poor trial after a few epochs and PBT can restart a trial from
a better one's checkpoint with changed hyperparameters. ``restored: 1`` is reported on the
first epoch after a checkpoint was loaded.
"""

from __future__ import annotations

import os
import pickle
import tempfile

import numpy as np
from ray import tune

from .common import data, new_model, run_epoch

MAX_EPOCHS = 1000  # the spec's `epochs` stops the trial long before this


def train(config: dict) -> None:
    x_tr, x_va, y_tr, y_va = data()
    classes = np.unique(y_tr)
    model = new_model(config)
    start, restored = 0, False
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d, open(os.path.join(d, "model.pkl"), "rb") as f:
            state = pickle.load(f)
        model, start, restored = state["model"], state["epoch"], True
        # PBT may have changed these since the checkpoint was written: use the new values
        model.set_params(alpha=float(config["alpha"]), learning_rate_init=float(config["lr"]))
    rng = np.random.default_rng(start)
    for epoch in range(start, MAX_EPOCHS):
        run_epoch(model, x_tr, y_tr, classes, rng, int(config.get("batch", 64)))
        acc = float(model.score(x_va, y_va))
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "model.pkl"), "wb") as f:
                pickle.dump({"model": model, "epoch": epoch + 1}, f)
            tune.report({"accuracy": acc, "restored": int(restored)},
                        checkpoint=tune.Checkpoint.from_directory(d))
        restored = False


def fail(config: dict) -> None:
    """An objective that breaks on its first epoch, for the failure path of `hpo-tune submit`."""
    raise RuntimeError(f"the objective failed on purpose (hidden={config.get('hidden')})")
