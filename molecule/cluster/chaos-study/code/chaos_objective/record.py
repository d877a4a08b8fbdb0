"""Objective of the cluster scenario's chaos study: sleeps, logs each finished evaluation.

The log (evals.jsonl in the worker's working directory, its state dir) holds
one line per evaluation that returned a value: the verifier compares it with
the store (every value there, none evaluated twice).
"""

import json
import os
import socket
import time


def objective(params):
    time.sleep(1.5)  # slow enough that the study outlasts the verifier's faults
    value = float(params["x"] + params["y"])
    line = json.dumps({"params": params, "value": value, "host": socket.gethostname(), "t": time.time()})
    fd = os.open("evals.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return value
