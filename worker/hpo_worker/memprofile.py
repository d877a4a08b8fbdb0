"""Peak memory of each trial, recorded with memray (spec ``worker: {memray: true}``).

Each evaluation of the objective runs inside a ``memray.Tracker`` writing one capture
file (memray's aggregated format: small, and enough for the peak and for ``memray
flamegraph``/``memray summary`` afterwards). The peak heap memory memray saw while the
objective ran goes into the trial's ``hpo`` user attr as ``peak_memory_bytes``; the
capture files stay under the worker's state directory, ``$HPO_STATE_DIR/memray/STUDY/``,
at most ``worker.memray_keep`` per study and host (oldest removed first).

memray tracks every thread of the process while a tracker is active, so the peak also
holds what the worker's heartbeat thread allocated meanwhile (a few KiB). memray is the
package's ``memray`` extra (``pip install 'hpo-worker[memray]'``).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger("hpo_worker")

MEMRAY_HINT = ("needs memray, the package's 'memray' extra, which is not installed in this Python:"
               " pip install 'hpo-worker[memray]' (the role installs it when a study sets worker.memray)")


def state_dir() -> Path:
    """The worker's state directory: $HPO_STATE_DIR (the unit sets it), else ~/.local/state/hpo-worker."""
    env = os.environ.get("HPO_STATE_DIR")
    return Path(env) if env else Path.home() / ".local" / "state" / "hpo-worker"


def import_memray() -> Any:
    """memray, or ImportError with how to install it."""
    try:
        import memray
    except ImportError as exc:
        raise ImportError(f"{MEMRAY_HINT} ({exc})") from None
    return memray


class Peak:
    """What one tracked evaluation measured: ``bytes`` is None until the tracker has ended
    (and stays None when the capture could not be read)."""

    __slots__ = ("bytes", "path")

    def __init__(self, path: Path) -> None:
        self.path = path
        self.bytes: int | None = None


class MemoryProfiler:
    """One per worker process: tracks evaluations into ``directory``, keeps the newest ``keep``."""

    def __init__(self, directory: Path, keep: int) -> None:
        self.memray = import_memray()
        self.dir = Path(directory)
        self.keep = keep
        self.dir.mkdir(mode=0o750, parents=True, exist_ok=True)

    @contextlib.contextmanager
    def track(self, name: str) -> Iterator[Peak]:
        """Track the body into ``DIR/NAME.bin``; after it, ``Peak.bytes`` holds its peak."""
        path = self.dir / f"{name}.bin"
        with contextlib.suppress(OSError):
            path.unlink()  # memray refuses to overwrite; a capture of a requeued trial's earlier run
        peak = Peak(path)
        try:
            tracker = self.memray.Tracker(path, file_format=self.memray.FileFormat.AGGREGATED_ALLOCATIONS)
            tracker.__enter__()
        except Exception as exc:  # noqa: BLE001 - never FAIL a trial because the profiler could not start
            log.warning("memray could not start (%r): %s runs without a memory profile", exc, name)
            yield peak
            return
        try:
            yield peak
        finally:
            tracker.__exit__(None, None, None)
            try:
                reader = self.memray.FileReader(path)
                try:
                    peak.bytes = int(reader.metadata.peak_memory)
                finally:
                    reader.close()
            except (OSError, RuntimeError, ValueError) as exc:
                log.warning("memray capture %s not readable, no peak recorded: %r", path, exc)
            self.prune()

    def prune(self) -> None:
        """Remove the oldest capture files beyond ``keep`` (by modification time, then name).
        Several worker processes may prune at once: a file another one removed is skipped."""
        files = []
        for p in self.dir.glob("*.bin"):
            try:
                files.append((p.stat().st_mtime_ns, p.name, p))
            except FileNotFoundError:
                continue
        files.sort()
        for _, _, p in files[:max(0, len(files) - self.keep)]:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
