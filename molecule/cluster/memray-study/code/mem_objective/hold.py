"""Hold MIB mebibytes for a moment, then return a quadratic: a trial whose
peak memory is known, for the memray option's check on real nodes."""

from __future__ import annotations

import time
from typing import Any

MIB = 32


def objective(params: dict[str, Any]) -> float:
    block = bytearray(MIB * 1024 * 1024)  # zero-filled: every page is allocated
    time.sleep(0.2)
    del block
    return float(params["x"] ** 2)
