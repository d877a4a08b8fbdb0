"""When a study's budget is reached: n_trials COMPLETE, or every point of a finite
space done (COMPLETE, or given up after max_attempts failed evaluations)."""

from __future__ import annotations

import logging
from typing import Any

from optuna.trial import TrialState

from .spec import StudySpec

log = logging.getLogger("hpo_worker")


class Budget:
    def __init__(self, spec: StudySpec) -> None:
        self.spec = spec
        self.finite = spec.sampler["type"] == "grid" or spec.space_size() is not None
        self._fp_done: dict[int, tuple[bool, str]] = {}  # finished trial id -> (given up?, fingerprint)
        self._scan_from = 0
        self._points_ok: set[str] = set()
        self._points_failed: set[str] = set()

    def reached(self, study: Any) -> bool:
        spec = self.spec
        trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if spec.n_trials is not None and len(trials) >= spec.n_trials:
            log.info("budget: %d COMPLETE trials reached", spec.n_trials)
            return True
        if not self.finite:
            return False
        self._update_points(study)
        ok, failed = self._points_ok, self._points_failed - self._points_ok
        if spec.sampler["type"] == "grid":
            if len(ok) + len(failed) >= spec.grid_size():
                log.info("grid: every one of its %d points is done (%d COMPLETE, %d given up after %d"
                         " failed attempts)", len(ok) + len(failed), len(ok), len(failed), spec.max_attempts)
                return True
        elif failed and len(ok) + len(failed) >= spec.space_size():
            # n_trials may be out of reach: given-up points never become COMPLETE
            log.info("space exhausted: every one of its %d points is done (%d COMPLETE, %d given up)",
                     len(ok) + len(failed), len(ok), len(failed))
            return True
        return False

    def _update_points(self, study: Any) -> None:
        """Distinct points done: COMPLETE, or given up after max_attempts failures (incremental)."""
        done = self._fp_done
        trials = study.get_trials(deepcopy=False)
        while self._scan_from < len(trials) and trials[self._scan_from]._trial_id in done:
            self._scan_from += 1  # finished trials never change: scan from the first unfinished one
        for t in trials[self._scan_from:]:
            if t._trial_id in done or not t.state.is_finished():
                continue
            given_up = t.state == TrialState.FAIL and "point_failed" in (t.user_attrs.get("hpo") or {})
            fp = ""
            if (t.state == TrialState.COMPLETE or given_up) and len(t.params) == len(self.spec.space):
                fp = self.spec.fingerprint(t.params)
                (self._points_failed if given_up else self._points_ok).add(fp)
            done[t._trial_id] = (given_up, fp)
