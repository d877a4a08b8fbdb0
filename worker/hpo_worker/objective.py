"""The objective: import it (also in a throwaway fork before --processes), how it is
called (with or without the trial), and what it must return."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from typing import Any, Callable


class ObjectiveError(ValueError):
    pass


class BadReturn(Exception):
    """The objective returned something that is not a float per direction (a programming error)."""


def short_repr(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def objective_values(result: Any, n_directions: int) -> list[float]:
    """The objective's return value as floats (possibly NaN/inf); BadReturn if it has the wrong
    type (None, a string, anything float() refuses) or the wrong number of values."""
    want = "a float" if n_directions == 1 else f"a list of {n_directions} floats (one per direction)"
    items = list(result) if isinstance(result, (list, tuple)) else [result]
    if len(items) != n_directions:
        raise BadReturn(f"returned {short_repr(result)}: {len(items)} value(s), but the study has "
                        f"{n_directions} direction(s); it must return {want}")
    out = []
    for v in items:
        if v is None or isinstance(v, (str, bytes)):
            raise BadReturn(f"returned {short_repr(result)} ({type(v).__name__}); it must return {want}")
        try:
            out.append(float(v))
        except (TypeError, ValueError):
            raise BadReturn(f"returned {short_repr(result)} ({type(v).__name__}, not a number);"
                            f" it must return {want}") from None
    return out


def load_objective(ref: str, code_dir: str | None = None) -> Callable[..., Any]:
    """'package.module:function' -> callable; errors name the objective field."""
    if code_dir:
        path = os.path.abspath(code_dir)
        if path not in sys.path:
            sys.path.insert(0, path)
    mod_name, _, fn_name = ref.partition(":")
    try:
        module = importlib.import_module(mod_name)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - any import error is reported the same way
        raise ObjectiveError(f"objective: cannot import module {mod_name!r}: {exc!r}"
                             f" (is --code-dir / HPO_CODE_DIR set?)") from None
    if not hasattr(module, fn_name):
        raise ObjectiveError(f"objective: {mod_name!r} has no function {fn_name!r}")
    fn = getattr(module, fn_name)
    if not callable(fn):
        raise ObjectiveError(f"objective: {ref} is {short_repr(fn, 60)} ({type(fn).__name__}), not a function")
    return fn


def check_objective_in_fork(ref: str, code_dir: str | None = None) -> None:
    """Import the objective in a throwaway forked process and raise its ObjectiveError here.

    Used before forking --processes N workers: an objective that fails to import is
    reported once, with exit 2, instead of a traceback per child; the parent itself
    never imports it (code that starts threads or a GPU context at import must not be forked).
    """
    sys.stdout.flush()
    sys.stderr.flush()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the throwaway child
        os.close(r)
        msg = ""
        try:
            load_objective(ref, code_dir)
        except ObjectiveError as exc:
            msg = str(exc)
        except BaseException as exc:  # noqa: BLE001 - anything the import raised
            msg = f"objective: importing {ref} raised {exc!r}"
        try:
            os.write(w, msg.encode("utf-8", "replace")[:60000])
        finally:
            os._exit(0)
    os.close(w)
    chunks = []
    with os.fdopen(r, "rb") as f:
        chunks.append(f.read())
    _, status = os.waitpid(pid, 0)
    msg = b"".join(chunks).decode("utf-8", "replace")
    if msg:
        raise ObjectiveError(msg)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise ObjectiveError(f"objective: importing {ref} ended the process that checks it"
                             f" ({'signal ' + str(-code) if code < 0 else 'exit ' + str(code)})")


def wants_trial(fn: Callable[..., Any]) -> bool:
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
    if any(p.name == "trial" for p in params):
        return True
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2
