"""Study spec: one YAML file per study, validated before anything runs.

Every error names the file and the field (dotted path), e.g.
``study.yaml: space.lr.low: must be a number, got 'abc'``.
"""

from __future__ import annotations

import json
import math
import re
import zlib
from dataclasses import dataclass
from decimal import Context, Decimal
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

SAMPLERS = ("tpe", "nsga3", "grid", "random")
# matched with fullmatch: "$" would also match before a trailing newline ("abc\n")
NAME_RE = re.compile(r"[A-Za-z0-9_.\-]+")
OBJECTIVE_RE = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")
GRID_MAX_POINTS = 10_000_000
SEED_MAX = 2**32 - 1  # numpy's RandomState accepts 0 .. 2**32 - 1
MAX_ATTEMPTS_DEFAULT = 3
MEMRAY_KEEP_DEFAULT = 100  # memray capture files kept per study and host (worker.memray_keep)
# Exact decimal arithmetic on any two floats: 1e308 / 5e-324 has about 630 digits.
_EXACT = Context(prec=1000, Emax=10_000, Emin=-10_000)


def _dec(x: float | int) -> Decimal:
    return Decimal(repr(float(x)))


def _count(n: int) -> str:
    return str(n) if n < 10**15 else f"about 10^{len(str(n)) - 1}"


def float_steps(low: float, high: float, step: float) -> Decimal:
    """(high - low) / step, exactly (integral when high - low is a multiple of step)."""
    return _EXACT.divide(_EXACT.subtract(_dec(high), _dec(low)), _dec(step))


class SpecError(ValueError):
    """A study spec is invalid; the message names the file and the field."""


@dataclass(frozen=True)
class Param:
    name: str
    kind: str  # int | float | categorical
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    def distribution(self) -> BaseDistribution:
        if self.kind == "int":
            return IntDistribution(int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        if self.kind == "float":
            return FloatDistribution(float(self.low), float(self.high), log=self.log, step=self.step)
        return CategoricalDistribution(list(self.choices))

    def grid_count(self) -> int | None:
        """How many points this axis has, computed without building them; None if continuous."""
        if self.kind == "categorical":
            return len(self.choices)
        if self.kind == "int":
            return len(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        if self.step is None:
            return None
        return int(float_steps(self.low, self.high, self.step)) + 1

    def grid_points(self) -> list[Any]:
        """Discrete points of this axis, each computed from its index (no float drift)."""
        if self.kind == "categorical":
            return list(self.choices)
        if self.kind == "int":
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        low, step = _dec(self.low), _dec(self.step)
        return [float(low + step * i) for i in range(self.grid_count())]

    def canonical(self, value: Any) -> Any:
        """The value snapped onto its grid, so equal points always print the same."""
        if self.kind == "float" and self.step is not None:
            low, step = Decimal(repr(float(self.low))), Decimal(repr(float(self.step)))
            index = round((Decimal(repr(float(value))) - low) / step)
            return float(low + step * index)
        if self.kind == "float":
            return float(value)
        if self.kind == "int":
            return int(value)
        return value


@dataclass(frozen=True)
class StudySpec:
    path: str
    name: str
    directions: tuple[str, ...]
    sampler: dict[str, Any]
    space: tuple[Param, ...]
    objective: str
    n_trials: int | None = None
    timeout: float | None = None
    heartbeat_interval: float = 2.0
    heartbeat_ttl: float = 10.0
    max_attempts: int = MAX_ATTEMPTS_DEFAULT
    memray: bool = False
    memray_keep: int = MEMRAY_KEEP_DEFAULT

    def distributions(self) -> dict[str, BaseDistribution]:
        return {p.name: p.distribution() for p in self.space}

    def grid_space(self) -> dict[str, list[Any]]:
        return {p.name: p.grid_points() for p in self.space}

    def grid_size(self) -> int:
        return math.prod(p.grid_count() for p in self.space)

    def space_size(self) -> int | None:
        """Number of distinct points of the space, or None when an axis is continuous."""
        counts = [p.grid_count() for p in self.space]
        return None if None in counts else math.prod(counts)

    def canonical_params(self, params: dict[str, Any]) -> dict[str, Any]:
        by_name = {p.name: p for p in self.space}
        return {k: (by_name[k].canonical(v) if k in by_name else v) for k, v in params.items()}

    def fingerprint(self, params: dict[str, Any]) -> str:
        return params_fingerprint(self.canonical_params(params))

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """Draw every param of the space on ``trial``; the values in canonical form."""
        out = {}
        for p in self.space:
            if p.kind == "int":
                v = trial.suggest_int(p.name, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
            elif p.kind == "float":
                v = trial.suggest_float(p.name, float(p.low), float(p.high), step=p.step, log=p.log)
            else:
                v = trial.suggest_categorical(p.name, list(p.choices))
            out[p.name] = p.canonical(v)
        return out

    def build_sampler(self, worker_key: str | None = None) -> optuna.samplers.BaseSampler:
        """The spec's sampler. With a seed and a ``worker_key`` (host and process index),
        each worker gets its own seed derived from both, so workers do not all draw the
        same sequence (which the duplicate guard would then turn into PRUNED trials)."""
        s = dict(self.sampler)
        kind = s.pop("type")
        seed = s.pop("seed", None)
        if seed is not None and worker_key:
            seed = (seed + zlib.crc32(worker_key.encode())) % 2**32
        if kind == "tpe":
            return optuna.samplers.TPESampler(seed=seed, multivariate=s.pop("multivariate", False), **s)
        if kind == "nsga3":
            return optuna.samplers.NSGAIIISampler(seed=seed, **s)
        if kind == "grid":
            return optuna.samplers.GridSampler(self.grid_space(), seed=seed)
        return optuna.samplers.RandomSampler(seed=seed)


def params_fingerprint(params: dict[str, Any]) -> str:
    """Canonical text of a param set: sorted keys, floats by repr, ints kept apart from floats."""

    def enc(v: Any) -> Any:
        if isinstance(v, bool) or v is None or isinstance(v, str):
            return v
        if isinstance(v, int):
            return {"i": str(v)}
        if isinstance(v, float):
            return {"f": repr(v)}
        return {"o": repr(v)}

    return json.dumps({k: enc(params[k]) for k in sorted(params)}, sort_keys=True, separators=(",", ":"))


class _Checker:
    def __init__(self, path: str) -> None:
        self.path = path

    def fail(self, field_name: str, msg: str) -> SpecError:
        return SpecError(f"{self.path}: {field_name}: {msg}")

    def number(self, d: dict, key: str, where: str, *, required: bool = True, integer: bool = False,
               positive: bool = False) -> Any:
        if key not in d or d[key] is None:
            if required:
                raise self.fail(f"{where}.{key}", "is required")
            return None
        v = d[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise self.fail(f"{where}.{key}", f"must be a{'n integer' if integer else ' number'}, got {v!r}")
        if integer and not isinstance(v, int):
            raise self.fail(f"{where}.{key}", f"must be an integer, got {v!r}")
        if isinstance(v, float) and not math.isfinite(v):
            raise self.fail(f"{where}.{key}", f"must be finite, got {v!r}")
        if positive and v <= 0:
            raise self.fail(f"{where}.{key}", f"must be > 0, got {v!r}")
        return v

    def keys(self, d: dict, allowed: set[str], where: str) -> None:
        unknown = sorted(set(d) - allowed)
        if unknown:
            raise self.fail(f"{where}.{unknown[0]}" if where else unknown[0],
                            f"unknown field (allowed: {', '.join(sorted(allowed))})")


def read_spec_file(path: str) -> Any:
    """The YAML document in PATH; SpecError naming the file when it cannot be read or parsed."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"{path}: cannot read the spec file: {exc.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {exc}") from None


def load_spec(path: str | Path) -> StudySpec:
    return parse_spec(read_spec_file(str(path)), str(path))


def check_top(data: Any, path: str, allowed: set[str]) -> tuple[_Checker, str]:
    """The checks every spec starts with (study and Tune): a mapping of ALLOWED
    fields with a valid name. Its checker (errors naming PATH) and the name."""
    c = _Checker(path)
    if not isinstance(data, dict):
        raise SpecError(f"{path}: the spec must be a YAML mapping")
    c.keys(data, allowed, "")
    name = data.get("name")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise c.fail("name", f"required; letters, digits, '_', '.', '-' only, got {name!r}")
    return c, name


def parse_spec(data: Any, path: str = "<spec>") -> StudySpec:
    c, name = check_top(data, path, {"name", "direction", "directions", "sampler", "space", "budget",
                                     "objective", "worker"})

    if "direction" in data and "directions" in data:
        raise c.fail("directions", "give either direction or directions, not both")
    raw_dirs = data.get("directions", data.get("direction", "minimize"))
    dir_field = "directions" if "directions" in data else "direction"
    if isinstance(raw_dirs, str):
        raw_dirs = [raw_dirs]
    if not isinstance(raw_dirs, list) or not raw_dirs:
        raise c.fail(dir_field, "must be 'minimize', 'maximize' or a non-empty list of them")
    for i, d in enumerate(raw_dirs):
        if d not in ("minimize", "maximize"):
            raise c.fail(f"{dir_field}[{i}]" if len(raw_dirs) > 1 else dir_field,
                         f"must be 'minimize' or 'maximize', got {d!r}")

    space = _parse_space(c, data.get("space"))
    sampler = _parse_sampler(c, data.get("sampler", {"type": "tpe"}), space, len(raw_dirs))

    objective = data.get("objective")
    if not isinstance(objective, str) or not OBJECTIVE_RE.fullmatch(objective):
        raise c.fail("objective", f"required, as 'package.module:function', got {objective!r}")

    budget = data.get("budget", {}) or {}
    if not isinstance(budget, dict):
        raise c.fail("budget", "must be a mapping with n_trials and/or timeout")
    c.keys(budget, {"n_trials", "timeout"}, "budget")
    n_trials = c.number(budget, "n_trials", "budget", required=False, integer=True, positive=True)
    timeout = c.number(budget, "timeout", "budget", required=False, positive=True)
    if n_trials is None and timeout is None and sampler["type"] != "grid":
        raise c.fail("budget", "needs n_trials and/or timeout (only a grid study may stop by itself)")

    worker = data.get("worker", {}) or {}
    if not isinstance(worker, dict):
        raise c.fail("worker", "must be a mapping")
    c.keys(worker, {"heartbeat_interval", "heartbeat_ttl", "max_attempts", "memray", "memray_keep"}, "worker")
    hb_interval = c.number(worker, "heartbeat_interval", "worker", required=False, positive=True) or 2.0
    hb_ttl = c.number(worker, "heartbeat_ttl", "worker", required=False, positive=True) or 5.0 * hb_interval
    if hb_ttl < 2 * hb_interval:
        raise c.fail("worker.heartbeat_ttl",
                     f"must be at least twice heartbeat_interval ({2 * hb_interval}), got {hb_ttl}")
    max_attempts = c.number(worker, "max_attempts", "worker", required=False, integer=True, positive=True)
    memray = worker.get("memray", False)
    if not isinstance(memray, bool):
        raise c.fail("worker.memray", f"must be true or false, got {memray!r}")
    memray_keep = c.number(worker, "memray_keep", "worker", required=False, integer=True, positive=True)
    if memray_keep is not None and not memray:
        raise c.fail("worker.memray_keep", "only applies with memray: true (no capture files are written)")

    return StudySpec(path=path, name=name, directions=tuple(raw_dirs), sampler=sampler, space=space,
                     objective=objective, n_trials=n_trials, timeout=timeout,
                     heartbeat_interval=float(hb_interval), heartbeat_ttl=float(hb_ttl),
                     max_attempts=max_attempts or MAX_ATTEMPTS_DEFAULT, memray=memray,
                     memray_keep=memray_keep or MEMRAY_KEEP_DEFAULT)


def _parse_space(c: _Checker, raw: Any) -> tuple[Param, ...]:
    if not isinstance(raw, dict) or not raw:
        raise c.fail("space", "required: a mapping of parameter name to {type: int|float|categorical, ...}")
    out = []
    for pname, p in raw.items():
        where = f"space.{pname}"
        if not isinstance(pname, str) or not pname:
            raise c.fail(where, "parameter names must be non-empty strings")
        if not isinstance(p, dict):
            raise c.fail(where, "must be a mapping with a type")
        kind = p.get("type")
        if kind == "categorical":
            c.keys(p, {"type", "choices"}, where)
            choices = p.get("choices")
            if not isinstance(choices, list) or not choices:
                raise c.fail(f"{where}.choices", "must be a non-empty list")
            # Optuna stores a choice as its index, found with ==: 1, 1.0 and true are one
            # choice to it (and 0, 0.0, false), so a second one would never be seen as done.
            seen: dict[Any, int] = {}
            for i, ch in enumerate(choices):
                if not (ch is None or isinstance(ch, (bool, int, float, str))):
                    raise c.fail(f"{where}.choices[{i}]", f"must be a string, number, bool or null, got {ch!r}")
                if isinstance(ch, float) and not math.isfinite(ch):
                    raise c.fail(f"{where}.choices[{i}]", f"must be finite, got {ch!r}")
                if ch in seen:
                    j = seen[ch]
                    same = "is a duplicate of" if type(ch) is type(choices[j]) else "is equal, for Optuna, to"
                    raise c.fail(f"{where}.choices[{i}]", f"{ch!r} {same} choices[{j}] ({choices[j]!r});"
                                 " each choice must be distinct (1, 1.0 and true are the same choice)")
                seen[ch] = i
            out.append(Param(pname, "categorical", choices=tuple(choices)))
            continue
        if kind not in ("int", "float"):
            raise c.fail(f"{where}.type", f"must be int, float or categorical, got {kind!r}")
        c.keys(p, {"type", "low", "high", "step", "log"}, where)
        integer = kind == "int"
        low = c.number(p, "low", where, integer=integer)
        high = c.number(p, "high", where, integer=integer)
        step = c.number(p, "step", where, required=False, integer=integer, positive=True)
        log = p.get("log", False)
        if not isinstance(log, bool):
            raise c.fail(f"{where}.log", f"must be true or false, got {log!r}")
        if low > high:
            raise c.fail(f"{where}.low", f"must be <= high ({high}), got {low}")
        if log and low <= 0:
            raise c.fail(f"{where}.low", f"must be > 0 when log is true, got {low}")
        if log and step is not None and (kind == "float" or step != 1):
            raise c.fail(f"{where}.step", "cannot be combined with log: true")
        if step is not None and kind == "float":
            span = float_steps(low, high, step)
            if span != span.to_integral_value():
                raise c.fail(f"{where}.step",
                             f"(high - low) must be a multiple of step: ({high} - {low}) / {step} = {span}")
        if step is not None and kind == "int" and (high - low) % step:
            raise c.fail(f"{where}.step",
                         f"(high - low) must be a multiple of step, got ({high} - {low}) % {step} != 0")
        out.append(Param(pname, kind, low=low, high=high, step=step, log=log))
    return tuple(out)


def _parse_sampler(c: _Checker, raw: Any, space: tuple[Param, ...], n_objectives: int) -> dict[str, Any]:
    if isinstance(raw, str):
        raw = {"type": raw}
    if not isinstance(raw, dict):
        raise c.fail("sampler", "must be a mapping with a type")
    kind = raw.get("type")
    if kind not in SAMPLERS:
        raise c.fail("sampler.type", f"must be one of {', '.join(SAMPLERS)}, got {kind!r}")
    out: dict[str, Any] = {"type": kind}
    allowed = {"type", "seed"}
    if "seed" in raw:
        seed = c.number(raw, "seed", "sampler", integer=True)
        if seed is not None and not 0 <= seed <= SEED_MAX:
            raise c.fail("sampler.seed", f"must be between 0 and {SEED_MAX} (numpy's range), got {seed}")
        out["seed"] = seed
    if kind == "tpe":
        allowed |= {"constant_liar", "n_startup_trials", "n_ei_candidates", "multivariate"}
        for key in ("constant_liar", "multivariate"):
            if key in raw:
                if not isinstance(raw[key], bool):
                    raise c.fail(f"sampler.{key}", f"must be true or false, got {raw[key]!r}")
                out[key] = raw[key]
        out.setdefault("constant_liar", True)
        for key in ("n_startup_trials", "n_ei_candidates"):
            if key in raw:
                out[key] = c.number(raw, key, "sampler", integer=True, positive=True)
    elif kind == "nsga3":
        allowed |= {"population_size"}
        if "population_size" in raw:
            ps = c.number(raw, "population_size", "sampler", integer=True, positive=True)
            if ps < 2:
                raise c.fail("sampler.population_size", f"must be >= 2, got {ps}")
            out["population_size"] = ps
    elif kind == "grid":
        for p in space:
            if p.kind == "float" and p.step is None:
                raise c.fail(f"space.{p.name}.step", "a grid needs a step on every float parameter")
            if p.log and p.kind == "int":
                raise c.fail(f"space.{p.name}.log",
                             "a grid axis cannot be logarithmic; list the points as a categorical")
        # counted, not built: a step of 1e-9 must not build a billion points to find out
        total = 1
        for p in space:
            n = p.grid_count()
            if n > GRID_MAX_POINTS:
                raise c.fail(f"space.{p.name}.step" if p.kind != "categorical" else f"space.{p.name}.choices",
                             f"this axis alone has {_count(n)} grid points, more than {GRID_MAX_POINTS}")
            total *= n
        if total > GRID_MAX_POINTS:
            raise c.fail("space", f"the grid has {_count(total)} points, more than {GRID_MAX_POINTS}")
    c.keys(raw, allowed, "sampler")
    return out
