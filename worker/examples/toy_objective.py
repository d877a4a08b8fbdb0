"""A tiny objective for trying hpo-worker out (no third-party imports)."""

import time


def quadratic(params):
    """Minimum 0 at x=3, y=-1, kind='b'; sleeps a little to look like work."""
    time.sleep(params.get("sleep", 0.2))
    penalty = {"a": 1.0, "b": 0.0, "c": 2.0}[params["kind"]]
    return (params["x"] - 3) ** 2 + (params["y"] + 1) ** 2 + penalty
