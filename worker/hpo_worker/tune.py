"""The Tune driver: runs one experiment spec with Ray Tune and records every trial in the store.

Run where Ray runs (a Ray Jobs entrypoint on the head, started by ``hpo-tune submit``):
``python -m hpo_worker.tune SPEC.yaml``. It connects to the running Ray cluster
(``ray.init()`` with no address inside a job), runs the search the spec names, and
writes each trial as a trial of the Optuna study named like the experiment through the
fenced journal backend the workers use (:class:`.backend.FencedJournalBackend`): nothing
else writes to the store. Each trial's ``hpo`` user attr holds the host it ran on (the
last one, and all of them), its training time, the search, the epochs it ran, whether it
was stopped early and how many times PBT made it exploit another trial, so
``hpo-worker report`` prints its per-host table.

* ``optuna``, ``optuna+asha``: Ray's OptunaSearch asks and tells on that same study and
  storage; the ``hpo`` attr is set just before its tell.
* ``random``, ``asha``, ``pbt``: Tune draws the configs; each trial is added to the study
  when it ends (COMPLETE, or FAIL when it raised), with its per-epoch values as
  intermediate values.

After each experiment it prints one line ``HPO_TUNE_SUMMARY {json}`` (best score, trials, stopped
early, exploited, wall time) that ``hpo-tune submit`` reads from the job's log, and it exits
1 when a trial failed (its error printed), 2 on a bad spec or store setting.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import os
import sys
import time
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.storages import JournalStorage
from optuna.trial import FrozenTrial, TrialState

from .backend import FencedJournalBackend
from .spec import Param, SpecError, StudySpec
from .store import Store
from .tune_spec import TuneSpec, load_tune_spec

log = logging.getLogger("hpo_worker.tune")
SUMMARY_TAG = "HPO_TUNE_SUMMARY"
HB_TTL_MS = 60_000  # the driver's journal worker ids: no reaper watches a Tune study's trials


def study_spec(spec: TuneSpec) -> StudySpec:
    """The worker's view of the experiment: its distributions and sampler are built by :mod:`.spec`."""
    return StudySpec(path=spec.path, name=spec.name, directions=(spec.direction,),
                     sampler=spec.sampler or {"type": "random"}, space=spec.space, objective=spec.objective,
                     n_trials=spec.n_trials, timeout=spec.timeout)


def tune_domain(p: Param) -> Any:
    """A Tune search-space domain drawing the same values as the param's Optuna distribution."""
    from ray import tune

    if p.kind == "categorical":
        return tune.choice(list(p.choices))
    if p.kind == "int":
        step = int(p.step or 1)
        if p.log:
            return tune.lograndint(int(p.low), int(p.high) + 1)
        if step == 1:
            return tune.randint(int(p.low), int(p.high) + 1)
        return tune.qrandint(int(p.low), int(p.high), step)
    if p.log:
        return tune.loguniform(float(p.low), float(p.high))
    if p.step is not None:
        return tune.quniform(float(p.low), float(p.high), float(p.step))
    return tune.uniform(float(p.low), float(p.high))


def in_space(p: Param, v: Any) -> Any:
    """A value PBT produced, put back inside the param's space (PBT scales floats by 0.8/1.2
    and may leave the bounds); the Optuna trial records this, the ``hpo`` attr the real one."""
    if p.kind == "categorical":
        return v if v in p.choices else p.choices[0]
    v = min(max(v, p.low), p.high)
    if p.kind == "int":
        step = int(p.step or 1)
        return int(p.low) + round((int(round(v)) - int(p.low)) / step) * step
    return p.canonical(v)


class Tracker:
    """What the driver knows of each trial, fed by a Tune callback (the same in every search)."""

    def __init__(self, spec: TuneSpec) -> None:
        self.spec = spec
        self.t0 = time.monotonic()
        self.start: dict[str, dt.datetime] = {}
        self.hosts: dict[str, list[str]] = {}
        self.values: dict[str, dict[int, float]] = {}
        self.last: dict[str, dict[str, Any]] = {}
        self.exploited: dict[str, int] = {}
        self.restored: dict[str, int] = {}
        self.done: dict[str, str] = {}  # trial id -> COMPLETE | FAIL
        self.errors: dict[str, str] = {}
        self.stopped_early: set[str] = set()
        self._last_print = 0.0

    def limit(self) -> int:
        return self.spec.search["max_t"] if self.spec.stops_early() else self.spec.epochs

    def best(self) -> tuple[float | None, str | None]:
        sign = 1 if self.spec.direction == "maximize" else -1
        best, who = None, None
        for tid, r in self.last.items():
            v = r.get(self.spec.metric)
            if isinstance(v, (int, float)) and math.isfinite(v) and (best is None or sign * v > sign * best):
                best, who = float(v), tid
        return best, who

    def attrs(self, tid: str) -> dict[str, Any]:
        r = self.last.get(tid, {})
        hosts = self.hosts.get(tid, [])
        return {"host": hosts[-1] if hosts else "?", "hosts": hosts, "tune_trial_id": tid,
                "search": self.spec.search["type"], "epochs": int(r.get("training_iteration", 0)),
                "duration": round(float(r.get("time_total_s", 0.0)), 3),
                "stopped_early": tid in self.stopped_early, "exploited": self.exploited.get(tid, 0),
                "config": {k: r.get("config", {}).get(k) for k in (p.name for p in self.spec.space)}}

    def progress(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_print < 5:
            return
        self._last_print = now
        best, who = self.best()
        running = len(self.start) - len(self.done)
        fails = sum(1 for s in self.done.values() if s == "FAIL")
        where = f" ({who} on {self.hosts.get(who, ['?'])[-1]})" if who else ""
        print(f"[{now - self.t0:7.1f}s] trials done {len(self.done)}/{self.spec.n_trials}, running {running},"
              f" stopped early {len(self.stopped_early)}, exploited {sum(self.exploited.values())},"
              f" failed {fails}; best {self.spec.metric} {best if best is not None else '-'}{where}", flush=True)

    def summary(self) -> dict[str, Any]:
        best, who = self.best()
        return {"experiment": self.spec.name, "search": self.spec.search["type"], "metric": self.spec.metric,
                "mode": self.spec.mode, "best": best, "best_trial": who,
                "best_config": self.attrs(who)["config"] if who else None,
                "trials": len(self.done), "failed": sum(1 for s in self.done.values() if s == "FAIL"),
                "stopped_early": len(self.stopped_early), "exploited": sum(self.exploited.values()),
                "exploited_trials": len(self.exploited),
                "restored": sum(self.restored.values()),
                "hosts": sorted({h for hs in self.hosts.values() for h in hs}),
                "wall_time_s": round(time.monotonic() - self.t0, 2)}


def make_callback(tracker: Tracker, recorder: Recorder | None):
    from ray.tune import Callback

    spec = tracker.spec

    class _Progress(Callback):
        def on_trial_start(self, iteration, trials, trial, **info):
            tracker.start.setdefault(trial.trial_id, dt.datetime.now())

        def on_trial_result(self, iteration, trials, trial, result, **info):
            tid = trial.trial_id
            tracker.start.setdefault(tid, dt.datetime.now())
            host = str(result.get("hostname", "?"))
            hs = tracker.hosts.setdefault(tid, [])
            if not hs or hs[-1] != host:
                hs.append(host)
            v = result.get(spec.metric)
            if isinstance(v, (int, float)) and math.isfinite(v):
                tracker.values.setdefault(tid, {})[int(result.get("training_iteration", 0))] = float(v)
            if result.get("restored"):
                tracker.restored[tid] = tracker.restored.get(tid, 0) + 1
            tracker.last[tid] = {**result, "config": dict(trial.config)}
            tracker.progress()

        def on_trial_complete(self, iteration, trials, trial, **info):
            tid = trial.trial_id
            its = int(tracker.last.get(tid, {}).get("training_iteration", 0))
            if its < tracker.limit():
                tracker.stopped_early.add(tid)
            tracker.done[tid] = "COMPLETE"
            if recorder is not None:
                recorder.record(tid, trial.config, TrialState.COMPLETE)
            tracker.progress(force=True)

        def on_trial_error(self, iteration, trials, trial, **info):
            tid = trial.trial_id
            tracker.done[tid] = "FAIL"
            tracker.errors[tid] = str(getattr(trial, "error_file", "") or "")
            if recorder is not None:
                recorder.record(tid, trial.config, TrialState.FAIL)
            tracker.progress(force=True)

    return _Progress()


class Recorder:
    """Adds finished Tune trials to the experiment's Optuna study (random, asha, pbt)."""

    def __init__(self, study: optuna.Study, tracker: Tracker) -> None:
        self.study = study
        self.tracker = tracker
        self.sspec = study_spec(tracker.spec)

    def record(self, tid: str, config: dict[str, Any], state: TrialState) -> None:
        t, spec = self.tracker, self.tracker.spec
        params = {p.name: in_space(p, config[p.name]) for p in spec.space if p.name in config}
        dists = {k: v for k, v in self.sspec.distributions().items() if k in params}
        for k, d in dists.items():  # an Optuna categorical stores the index: the value must be a choice
            if isinstance(d, CategoricalDistribution) and params[k] not in d.choices:
                params[k] = d.choices[0]
        value = t.last.get(tid, {}).get(spec.metric)
        ok = state == TrialState.COMPLETE and isinstance(value, (int, float)) and math.isfinite(value)
        now = dt.datetime.now()
        frozen = FrozenTrial(
            number=-1, state=TrialState.COMPLETE if ok else TrialState.FAIL,
            value=float(value) if ok else None, values=None,
            datetime_start=t.start.get(tid, now), datetime_complete=now,
            params=params, distributions=dists,
            user_attrs={"hpo": t.attrs(tid)}, system_attrs={},
            intermediate_values=dict(t.values.get(tid, {})), trial_id=-1)
        self.study.add_trial(frozen)


def _optuna_search(spec: TuneSpec, storage: JournalStorage, tracker: Tracker):
    from ray.tune.search.optuna import OptunaSearch

    class _RecordingOptunaSearch(OptunaSearch):
        """OptunaSearch on the fenced storage; sets the ``hpo`` attr on the trial just before its tell.
        (``_ot_trials`` is OptunaSearch's own map of Tune trial id to Optuna trial.)"""

        def on_trial_complete(self, trial_id, result=None, error=False):
            ot_trial = self._ot_trials.get(trial_id)
            if ot_trial is not None and trial_id not in self._completed_trials:
                its = int((result or tracker.last.get(trial_id, {})).get("training_iteration", 0))
                if not error and its < tracker.limit():
                    tracker.stopped_early.add(trial_id)
                try:
                    # a result that made the scheduler stop the trial reaches on_trial_complete only,
                    # not on_trial_result: report the epochs OptunaSearch has not seen
                    seen = ot_trial.storage.get_trial(ot_trial._trial_id).intermediate_values
                    values = dict(tracker.values.get(trial_id, {}))
                    if result and isinstance(result.get(self.metric), (int, float)):
                        values[int(result.get("training_iteration", 0))] = float(result[self.metric])
                    for step, v in sorted(values.items()):
                        if step not in seen and math.isfinite(v):
                            ot_trial.report(v, step)
                    ot_trial.set_user_attr("hpo", tracker.attrs(trial_id))
                except Exception:  # noqa: BLE001 - the value still gets recorded by the tell below
                    log.exception("could not record the epochs and hpo attr of trial %s", trial_id)
            super().on_trial_complete(trial_id, result=result, error=error)

    ss = study_spec(spec)
    return _RecordingOptunaSearch(space=ss.distributions(), metric=spec.metric, mode=spec.mode,
                                  sampler=ss.build_sampler(), study_name=spec.name, storage=storage)


def _pbt(spec: TuneSpec, tracker: Tracker):
    from ray.tune.schedulers import PopulationBasedTraining

    by_name = {p.name: p for p in spec.space}

    class _CountingPBT(PopulationBasedTraining):
        """PBT that counts, per trial, the exploit steps it made (``_exploit`` is PBT's own step:
        clone the better trial's checkpoint and config, then explore)."""

        def _exploit(self, tune_controller, trial, trial_to_clone):
            super()._exploit(tune_controller, trial, trial_to_clone)
            tracker.exploited[trial.trial_id] = tracker.exploited.get(trial.trial_id, 0) + 1

    s = spec.search
    mutations = {name: (list(values) if values is not None else tune_domain(by_name[name]))
                 for name, values in s["hyperparam_mutations"].items()}
    return _CountingPBT(time_attr="training_iteration", perturbation_interval=s["perturbation_interval"],
                        hyperparam_mutations=mutations, quantile_fraction=s["quantile_fraction"],
                        resample_probability=s["resample_probability"], metric=spec.metric, mode=spec.mode,
                        synch=s["synch"])


def run_experiment(spec: TuneSpec, store: Store, storage_path: str | None = None) -> dict[str, Any]:
    """Run the experiment on the Ray cluster this process is connected to; the summary."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator

    from .objective import load_objective

    trainable = load_objective(spec.objective)
    backend = FencedJournalBackend(store, HB_TTL_MS, spec.name)
    storage = JournalStorage(backend)
    study = optuna.create_study(storage=storage, study_name=spec.name, load_if_exists=True,
                                direction=spec.direction)
    tracker = Tracker(spec)
    s = spec.search
    kind = s["type"]
    searcher = scheduler = None
    param_space = {p.name: tune_domain(p) for p in spec.space}
    recorder = None
    if spec.uses_optuna():
        searcher = _optuna_search(spec, storage, tracker)
        param_space = {}
    else:
        searcher = BasicVariantGenerator(random_state=s.get("seed"))
        recorder = Recorder(study, tracker)
    if kind in ("asha", "optuna+asha"):
        scheduler = ASHAScheduler(time_attr="training_iteration", max_t=s["max_t"], grace_period=s["grace_period"],
                                  reduction_factor=s["reduction_factor"], metric=spec.metric, mode=spec.mode)
    elif kind == "pbt":
        scheduler = _pbt(spec, tracker)
    res = {k: v for k, v in spec.resources.items() if v > 0}
    trainable = tune.with_resources(trainable, res)
    tune_config = tune.TuneConfig(
        num_samples=spec.n_trials, search_alg=searcher, scheduler=scheduler,
        max_concurrent_trials=spec.max_concurrent_trials, time_budget_s=spec.timeout,
        # one actor runs trial after trial (and a PBT trial after a pause): no new process, no new
        # imports per trial; metric and mode are given to the searcher and scheduler above
        reuse_actors=True,
    )
    run_config = tune.RunConfig(
        name=f"{spec.name}-{int(time.time())}", storage_path=storage_path or spec.storage_path,
        stop={"training_iteration": spec.epochs}, callbacks=[make_callback(tracker, recorder)],
        failure_config=tune.FailureConfig(max_failures=0), verbose=0,
        checkpoint_config=tune.CheckpointConfig(num_to_keep=4 if kind == "pbt" else 2))
    print(f"experiment {spec.name}: search {kind}, {spec.n_trials} trials of at most {spec.epochs} epochs,"
          f" resources per trial {res}, cluster {ray.cluster_resources()}", flush=True)
    grid = tune.Tuner(trainable, param_space=param_space, tune_config=tune_config, run_config=run_config).fit()
    tracker.progress(force=True)
    summary = tracker.summary()
    errors = [r.error for r in grid if r.error is not None]
    summary["errors"] = [_short_error(e) for e in errors]
    return summary


def _short_error(e: BaseException) -> str:
    text = str(e).strip()
    lines = text.splitlines()
    return "\n".join(lines[-25:]) if len(lines) > 25 else text


def store_from_env() -> Store:
    from .election import parse_endpoints

    endpoints = os.environ.get("HPO_KEYDB_ENDPOINTS")
    if not endpoints:
        raise SpecError("no store given: set HPO_KEYDB_ENDPOINTS (host:port,host:port)")
    store = Store(parse_endpoints(endpoints), password=os.environ.get("HPO_KEYDB_PASSWORD") or None,
                  namespace=os.environ.get("HPO_NAMESPACE", "hpo"),
                  username=os.environ.get("HPO_KEYDB_USERNAME") or None)
    store.elect(wait=float(os.environ.get("HPO_CONNECT_WAIT", "60")))
    return store


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hpo_worker.tune",
                                 description="Run Tune experiment specs, one after another, on the Ray cluster this "
                                             "process reaches (a Ray job's entrypoint); store from HPO_KEYDB_ENDPOINTS,"
                                             " HPO_KEYDB_USERNAME, HPO_KEYDB_PASSWORD.")
    ap.add_argument("specs", nargs="+", metavar="SPEC")
    ap.add_argument("--code-dir", default=".", help="prepended to sys.path (default: the job's working dir)")
    ap.add_argument("--storage-path", help="Tune's storage path (default: the spec's, else Ray's)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=os.environ.get("HPO_LOG_LEVEL", "WARNING"), stream=sys.stderr)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        specs = [load_tune_spec(p) for p in args.specs]  # all checked before the first runs
        store = store_from_env()
    except (SpecError, ValueError) as exc:
        print(f"hpo-tune: error: {exc}", file=sys.stderr)
        return 2
    sys.path.insert(0, os.path.abspath(args.code_dir))
    # a checkpoint every epoch is the point of the sample; Tune's warning about it is noise here
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    import ray

    ray.init(address=os.environ.get("HPO_RAY_ADDRESS") or None, log_to_driver=True)
    failed = False
    try:
        for spec in specs:
            summary = run_experiment(spec, store, args.storage_path)
            for e in summary["errors"]:
                print(f"trial error ({spec.name}):\n{e}", flush=True)
            print(f"{SUMMARY_TAG} {json.dumps(summary, sort_keys=True)}", flush=True)
            failed = failed or bool(summary["errors"] or summary["failed"])
    finally:
        store.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
