"""Tune experiment spec: the study spec's YAML plus a search, epochs and resources per trial.

The space, objective, name, direction and sampler are parsed by :mod:`.spec` (one copy of
those rules); this module adds what a Ray Tune experiment needs. Every error names the
file and the field, e.g. ``exp.yaml: search.reduction_factor: must be > 1, got 1``.
No Ray import here: a spec is checked on the controller before anything is sent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .spec import (
    NAME_RE,
    OBJECTIVE_RE,
    Param,
    _Checker,
    _parse_sampler,
    _parse_space,
    check_top,
    read_spec_file,
)

SEARCHES = ("random", "asha", "optuna", "optuna+asha", "pbt")
# the worker's samplers that make sense for one metric inside Ray's OptunaSearch
TUNE_SAMPLERS = ("tpe", "random")
TOP_FIELDS = {"name", "direction", "metric", "objective", "space", "budget", "epochs", "search", "sampler",
              "resources_per_trial", "max_concurrent_trials", "storage_path"}


@dataclass(frozen=True)
class TuneSpec:
    path: str
    name: str
    direction: str            # minimize | maximize
    metric: str               # the key the objective reports each epoch
    objective: str            # package.module:function, a Tune function trainable
    space: tuple[Param, ...]
    n_trials: int             # Tune's num_samples
    epochs: int               # every trial stops at this training_iteration
    search: dict[str, Any]    # type + its settings, defaults filled in
    sampler: dict[str, Any] | None = None  # optuna searches only: the worker's sampler settings
    timeout: float | None = None
    resources: dict[str, float] = field(default_factory=lambda: {"cpu": 1.0})
    max_concurrent_trials: int | None = None
    storage_path: str | None = None

    @property
    def mode(self) -> str:
        return "max" if self.direction == "maximize" else "min"

    def uses_optuna(self) -> bool:
        return self.search["type"] in ("optuna", "optuna+asha")

    def stops_early(self) -> bool:
        return self.search["type"] in ("asha", "optuna+asha")


def load_tune_spec(path: str | Path) -> TuneSpec:
    return parse_tune_spec(read_spec_file(str(path)), str(path))


def parse_tune_spec(data: Any, path: str = "<spec>") -> TuneSpec:
    c, name = check_top(data, path, TOP_FIELDS)
    direction = data.get("direction", "maximize")
    if direction not in ("minimize", "maximize"):
        raise c.fail("direction", f"must be 'minimize' or 'maximize' (one metric), got {direction!r}")
    metric = data.get("metric")
    if not isinstance(metric, str) or not metric:
        raise c.fail("metric", f"required: the name of the value the objective reports each epoch, got {metric!r}")
    objective = data.get("objective")
    if not isinstance(objective, str) or not OBJECTIVE_RE.fullmatch(objective):
        raise c.fail("objective", f"required, as 'package.module:function', got {objective!r}")
    space = _parse_space(c, data.get("space"))

    budget = data.get("budget")
    if not isinstance(budget, dict):
        raise c.fail("budget", "required: a mapping with n_trials (and optionally timeout)")
    c.keys(budget, {"n_trials", "timeout"}, "budget")
    n_trials = c.number(budget, "n_trials", "budget", integer=True, positive=True)
    timeout = c.number(budget, "timeout", "budget", required=False, positive=True)
    if data.get("epochs") is None:
        raise c.fail("epochs", "required: the most training iterations (epochs) a trial runs")
    epochs = _top_int(c, data, "epochs", True)

    search = _parse_search(c, data.get("search"), space, epochs)
    sampler = None
    if "sampler" in data:
        if search["type"] not in ("optuna", "optuna+asha"):
            raise c.fail("sampler", f"only for search optuna or optuna+asha, not {search['type']!r}")
        raw = data["sampler"]
        kind = raw if isinstance(raw, str) else raw.get("type") if isinstance(raw, dict) else None
        if kind not in TUNE_SAMPLERS:
            raise c.fail("sampler.type", f"must be one of {', '.join(TUNE_SAMPLERS)} for a Tune experiment,"
                         f" got {kind!r}")
        sampler = _parse_sampler(c, raw, space, 1)
    elif search["type"] in ("optuna", "optuna+asha"):
        sampler = {"type": "tpe", "constant_liar": True}

    resources = _parse_resources(c, data.get("resources_per_trial", {"cpu": 1}))
    mct = _top_int(c, data, "max_concurrent_trials", False)
    storage_path = data.get("storage_path")
    if storage_path is not None and (not isinstance(storage_path, str) or not storage_path.startswith("/")):
        raise c.fail("storage_path", f"must be an absolute path (a directory every node sees), got {storage_path!r}")
    return TuneSpec(path=path, name=name, direction=direction, metric=metric, objective=objective, space=space,
                    n_trials=n_trials, epochs=epochs, search=search, sampler=sampler, timeout=timeout,
                    resources=resources, max_concurrent_trials=mct, storage_path=storage_path)


def _top_int(c: _Checker, data: dict, key: str, required: bool) -> int | None:
    """A positive integer at the top level of the spec (the field named without a leading dot)."""
    v = data.get(key)
    if v is None:
        if required:
            raise c.fail(key, "is required")
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise c.fail(key, f"must be an integer, got {v!r}")
    if v <= 0:
        raise c.fail(key, f"must be > 0, got {v!r}")
    return v


def _parse_search(c: _Checker, raw: Any, space: tuple[Param, ...], epochs: int) -> dict[str, Any]:
    if isinstance(raw, str):
        raw = {"type": raw}
    if not isinstance(raw, dict):
        raise c.fail("search", f"required: a mapping with a type ({', '.join(SEARCHES)})")
    kind = raw.get("type")
    if kind not in SEARCHES:
        raise c.fail("search.type", f"must be one of {', '.join(SEARCHES)}, got {kind!r}")
    out: dict[str, Any] = {"type": kind}
    allowed = {"type"}
    if kind in ("random", "pbt", "asha"):
        allowed.add("seed")
        if "seed" in raw:
            seed = c.number(raw, "seed", "search", integer=True)
            if not 0 <= seed <= 2**32 - 1:
                raise c.fail("search.seed", f"must be between 0 and {2**32 - 1}, got {seed}")
            out["seed"] = seed
    if kind in ("asha", "optuna+asha"):
        allowed |= {"grace_period", "reduction_factor", "max_t"}
        max_t = c.number(raw, "max_t", "search", required=False, integer=True, positive=True) or epochs
        if max_t > epochs:
            raise c.fail("search.max_t", f"must be <= epochs ({epochs}), got {max_t}")
        grace = c.number(raw, "grace_period", "search", required=False, integer=True, positive=True) or 1
        if grace > max_t:
            raise c.fail("search.grace_period", f"must be <= max_t ({max_t}), got {grace}")
        rf = c.number(raw, "reduction_factor", "search", required=False)
        rf = 2 if rf is None else rf
        if rf <= 1:
            raise c.fail("search.reduction_factor", f"must be > 1, got {rf}")
        out.update(max_t=max_t, grace_period=grace, reduction_factor=rf)
    if kind == "pbt":
        allowed |= {"perturbation_interval", "hyperparam_mutations", "quantile_fraction", "resample_probability",
                    "synch"}
        synch = raw.get("synch", False)
        if not isinstance(synch, bool):
            raise c.fail("search.synch", f"must be true or false, got {synch!r}")
        pi = c.number(raw, "perturbation_interval", "search", integer=True, positive=True)
        if pi >= epochs:
            raise c.fail("search.perturbation_interval", f"must be < epochs ({epochs}) or PBT never acts, got {pi}")
        qf = c.number(raw, "quantile_fraction", "search", required=False)
        qf = 0.25 if qf is None else qf
        if not 0 < qf <= 0.5:
            raise c.fail("search.quantile_fraction", f"must be in (0, 0.5], got {qf}")
        rp = c.number(raw, "resample_probability", "search", required=False)
        rp = 0.25 if rp is None else rp
        if not 0 <= rp <= 1:
            raise c.fail("search.resample_probability", f"must be in [0, 1], got {rp}")
        out.update(perturbation_interval=pi, quantile_fraction=qf, resample_probability=rp, synch=synch,
                   hyperparam_mutations=_parse_mutations(c, raw.get("hyperparam_mutations"), space))
    c.keys(raw, allowed, "search")
    return out


def _parse_mutations(c: _Checker, raw: Any, space: tuple[Param, ...]) -> dict[str, list[Any] | None]:
    """Names of space params (mutated within their space) or name -> list of values."""
    where = "search.hyperparam_mutations"
    names = {p.name for p in space}
    if isinstance(raw, list):
        raw = {n: None for n in raw}
    if not isinstance(raw, dict) or not raw:
        raise c.fail(where, "required: a list of space parameters, or a mapping of parameter to a list of values")
    out: dict[str, list[Any] | None] = {}
    for pname, values in raw.items():
        if pname not in names:
            raise c.fail(f"{where}.{pname}", f"not a parameter of space (space has: {', '.join(sorted(names))})")
        if values is not None and (not isinstance(values, list) or not values):
            raise c.fail(f"{where}.{pname}", f"must be a non-empty list of values (or null: its space), got {values!r}")
        out[pname] = values
    return out


def _parse_resources(c: _Checker, raw: Any) -> dict[str, float]:
    where = "resources_per_trial"
    if not isinstance(raw, dict) or not raw:
        raise c.fail(where, "must be a mapping like {cpu: 1, gpu: 0.25, <custom resource>: 1}")
    out: dict[str, float] = {}
    for key, v in raw.items():
        if not isinstance(key, str) or not NAME_RE.fullmatch(key):
            raise c.fail(f"{where}.{key}", "resource names are letters, digits, '_', '.', '-'")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
            raise c.fail(f"{where}.{key}", f"must be a number, got {v!r}")
        if v < 0 or (v == 0 and key not in ("cpu", "gpu")):
            raise c.fail(f"{where}.{key}", f"must be > 0, got {v!r}")
        if v > 1 and v != int(v):
            # Ray: a quantity above 1 must be a whole number (fractions only below one)
            raise c.fail(f"{where}.{key}", f"above 1 it must be a whole number (Ray's rule), got {v!r}")
        out[key] = float(v)
    out.setdefault("cpu", 1.0)
    if out["cpu"] == 0 and out.get("gpu", 0) == 0 and len(out) == 1:
        raise c.fail(f"{where}.cpu", "a trial must ask for some resource (cpu, gpu or a custom one)")
    return out
