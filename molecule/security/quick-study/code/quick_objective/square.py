"""A quadratic with its minimum at x = 3: a trial costs nothing."""

from __future__ import annotations

from typing import Any


def objective(params: dict[str, Any]) -> float:
    return float((params["x"] - 3.0) ** 2)
