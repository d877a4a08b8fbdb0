"""Objectives used by the tests and benchmarks: each evaluation appends one line to a log."""

import json
import os
import time


def _log(params, **extra):
    path = os.environ.get("HPO_TEST_EVAL_LOG")
    if path:
        line = json.dumps({"params": params, "pid": os.getpid(), "t": time.time(), **extra}) + "\n"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)


def record(params):
    """Sleeps HPO_TEST_SLEEP seconds, logs the evaluation, returns a value from the params."""
    _log(params, phase="start")
    time.sleep(float(os.environ.get("HPO_TEST_SLEEP", "0")))
    _log(params, phase="end")
    return float(sum(v for v in params.values() if isinstance(v, (int, float))))


def with_trial(params, trial):
    trial.set_user_attr("seen_number", trial.number)
    return record(params)


def empty(params):
    return 0.0


def two(params):
    """Two objectives, for multi-objective studies."""
    record(params)
    return [float(params["x"]), float(params["y"])]


def hold_memory(params):
    """Holds a bytearray of params["mib"] MiB for HPO_TEST_SLEEP seconds (memray peak tests)."""
    block = bytearray(int(params["mib"]) * 2**20)
    record(params)
    return float(len(block) // 2**20)


def alloc_work(params):
    """Some allocation-heavy work (a few ms): many small objects and a few larger buffers;
    what benchmarks/bench_memray.py times with and without memray."""
    items = [float(i) * params["x"] for i in range(20_000)]
    buffers = [bytearray(256 * 1024) for _ in range(8)]
    text = ",".join(str(v) for v in items[:5_000])
    return float(len(text) + len(buffers)) * 0.0 + sum(items) * 1e-9
