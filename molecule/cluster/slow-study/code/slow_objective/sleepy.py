"""Sleep a few seconds, then return a simple quadratic: a trial that is long
enough to be caught in flight by `systemctl stop` or `kill -9`."""

from __future__ import annotations

import time
from typing import Any

SECONDS = 4.0


def objective(params: dict[str, Any]) -> float:
    time.sleep(SECONDS)
    return float((params["x"] - 500) ** 2)
