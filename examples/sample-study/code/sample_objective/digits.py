"""Cross-validated accuracy of an RBF support-vector classifier on the
handwritten-digits data set that ships inside scikit-learn.

Nothing is downloaded: ``load_digits`` reads a file installed with the
package. One evaluation takes well under a second of CPU, so the demo study
finishes in a couple of minutes even on a small shared machine.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from sklearn.datasets import load_digits
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC


@lru_cache(maxsize=1)
def _data() -> tuple[Any, Any]:
    digits = load_digits()
    return digits.data, digits.target


def objective(params: dict[str, Any]) -> float:
    """Mean 3-fold accuracy for one point of the search space (maximise)."""
    x, y = _data()
    model = make_pipeline(
        StandardScaler(),
        SVC(C=float(params["C"]), gamma=float(params["gamma"]), kernel="rbf"),
    )
    folds = StratifiedKFold(n_splits=3, shuffle=True, random_state=0)
    scores = cross_val_score(model, x, y, cv=folds, n_jobs=1)
    return float(scores.mean())
