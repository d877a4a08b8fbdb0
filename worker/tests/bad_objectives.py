"""Objectives that return or raise what users write by mistake (tests of issue 10)."""

import math

from objectives import _log


def nonfinite(params):
    """NaN at x == 2, inf at x == 3, a value elsewhere."""
    _log(params, phase="start")
    x = params["x"]
    return math.nan if x == 2 else math.inf if x == 3 else float(x)


def raises_at_1_nan_at_3(params):
    _log(params, phase="start")
    if params["x"] == 1:
        raise RuntimeError("this point always fails")
    return math.nan if params["x"] == 3 else float(params["x"])


def always_raises(params):
    _log(params, phase="start")
    raise RuntimeError("never works")


def returns_str(params):
    _log(params, phase="start")
    return "abc"


def returns_none(params):
    _log(params, phase="start")


def returns_pair(params):
    _log(params, phase="start")
    return [1.0, 2.0]
