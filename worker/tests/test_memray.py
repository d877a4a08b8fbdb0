"""Spec `worker: {memray: true}`: each trial's peak memory, measured by memray (real memray,
real redis-server, the real worker CLI), goes into the trial's hpo attr, the text report and
the HTML report; the capture files stay under $HPO_STATE_DIR, bounded by worker.memray_keep."""

import re
import subprocess
import sys

import pytest
from conftest import load_trials, start_worker, worker_env, write_spec
from hpo_worker.spec import SpecError, parse_spec

MIB = 2**20
# A trial holding N MiB must show a peak of N MiB to N MiB + TOLERANCE: what else the process
# allocates while the objective runs (its log line, the heartbeat thread) is far below this.
TOLERANCE = 2 * MIB


def run_study(tmp_path, servers, name, space, n_trials=None, sampler=None, keep=None, sleep=0.0):
    r = servers()
    worker = {"heartbeat_interval": 0.3, "heartbeat_ttl": 1.5, "memray": True}
    if keep is not None:
        worker["memray_keep"] = keep
    spec = write_spec(tmp_path / f"{name}.yaml", name=name, space=space, objective="objectives:hold_memory",
                      sampler=sampler or {"type": "random", "seed": 1},
                      budget={"n_trials": n_trials} if n_trials else {}, worker=worker)
    state = tmp_path / "state"
    env = worker_env(tmp_path / "evals.jsonl", sleep, HPO_STATE_DIR=str(state))
    p = start_worker(spec, [r.endpoint], env, host="h1", log=tmp_path / "worker.log")
    assert p.wait(timeout=120) == 0, (tmp_path / "worker.log").read_text()
    return r, state / "memray" / name


def test_peak_memory_of_each_trial_in_attr_report_and_html(tmp_path, servers):
    space = {"mib": {"type": "categorical", "choices": [8, 64]}}
    r, captures = run_study(tmp_path, servers, "mem", space, sampler={"type": "grid"}, sleep=0.05)
    trials = [t for t in load_trials(r.endpoint, "mem") if t.state.name == "COMPLETE"]
    assert sorted(t.params["mib"] for t in trials) == [8, 64]
    for t in trials:
        peak = t.user_attrs["hpo"]["peak_memory_bytes"]
        held = t.params["mib"] * MIB
        assert held <= peak <= held + TOLERANCE, (t.params, peak)
        assert (captures / f"mem-t{t.number}-{t.user_attrs['hpo']['pid']}.bin").is_file()

    # text report: the host line has the largest and the median peak, in MiB
    env = worker_env(tmp_path / "unused.jsonl")
    rep = subprocess.run([sys.executable, "-m", "hpo_worker", "report", "--endpoints", r.endpoint,
                          "--html", str(tmp_path / "r.html")], env=env, capture_output=True, text=True, timeout=120)
    assert rep.returncode == 0, rep.stderr
    header = next(line for line in rep.stdout.splitlines() if line.startswith("host"))
    assert "peak MiB max" in header
    line = next(line for line in rep.stdout.splitlines() if line.startswith("h1:"))
    mean, median, count, peak_max, peak_median = line.split()[1:]
    assert count == "2"
    assert 64 <= float(peak_max) <= 64 + TOLERANCE / MIB
    assert 36 <= float(peak_median) <= 36 + TOLERANCE / MIB  # median of 8 and 64

    page = (tmp_path / "r.html").read_text()
    assert "<th>peak MiB max</th>" in page and f"<td>{peak_max}</td>" in page
    assert 'data-kind="memory" data-study="mem"' in page  # the per-trial peak plot


def test_capture_files_are_bounded_oldest_removed_first(tmp_path, servers):
    space = {"mib": {"type": "int", "low": 1, "high": 1000}}
    r, captures = run_study(tmp_path, servers, "bound", space, n_trials=7, keep=3)
    trials = sorted((t for t in load_trials(r.endpoint, "bound") if t.state.name == "COMPLETE"),
                    key=lambda t: t.number)
    assert len(trials) == 7
    assert all(t.user_attrs["hpo"]["peak_memory_bytes"] >= t.params["mib"] * MIB for t in trials)
    kept = sorted(int(re.fullmatch(r"bound-t(\d+)-\d+\.bin", p.name)[1]) for p in captures.iterdir())
    assert kept == [t.number for t in trials[-3:]]  # one process: the newest are the last trials


def test_report_without_memray_has_no_memory_columns(tmp_path, servers):
    r = servers()
    spec = write_spec(tmp_path / "plain.yaml", name="plain", budget={"n_trials": 3})
    p = start_worker(spec, [r.endpoint], worker_env(tmp_path / "e.jsonl"), log=tmp_path / "w.log")
    assert p.wait(timeout=60) == 0
    assert all("peak_memory_bytes" not in t.user_attrs["hpo"] for t in load_trials(r.endpoint, "plain"))
    rep = subprocess.run([sys.executable, "-m", "hpo_worker", "report", "--endpoints", r.endpoint],
                         env=worker_env(tmp_path / "e.jsonl"), capture_output=True, text=True, timeout=60)
    assert rep.returncode == 0 and "h1:" in rep.stdout and "peak" not in rep.stdout, rep.stdout + rep.stderr


BASE = {"name": "s", "space": {"x": {"type": "int", "low": 0, "high": 3}}, "budget": {"n_trials": 2},
        "objective": "m:f"}


@pytest.mark.parametrize("worker, field, words", [
    ({"memray": "yes"}, "worker.memray", "must be true or false, got 'yes'"),
    ({"memray": 1}, "worker.memray", "must be true or false, got 1"),
    ({"memray": True, "memray_keep": 0}, "worker.memray_keep", "must be > 0, got 0"),
    ({"memray": True, "memray_keep": 2.5}, "worker.memray_keep", "must be an integer, got 2.5"),
    ({"memray_keep": 5}, "worker.memray_keep", "only applies with memray: true"),
    ({"memray_dir": "/tmp"}, "worker.memray_dir", "unknown field"),
])
def test_spec_errors_name_the_file_and_field(worker, field, words):
    with pytest.raises(SpecError) as exc:
        parse_spec({**BASE, "worker": worker}, "study.yaml")
    assert str(exc.value).startswith(f"study.yaml: {field}: ") and words in str(exc.value), str(exc.value)


def test_spec_defaults():
    s = parse_spec({**BASE, "worker": {"memray": True}}, "study.yaml")
    assert (s.memray, s.memray_keep) == (True, 100)
    assert parse_spec(BASE, "study.yaml").memray is False


def test_validate_without_memray_installed_says_how(tmp_path):
    """memray missing: simulated by blocking its import in the CLI's process (it is installed here)."""
    spec = write_spec(tmp_path / "s.yaml", worker={"memray": True})
    code = ("import sys; sys.modules['memray'] = None; from hpo_worker.cli import main;"
            " sys.exit(main(sys.argv[1:]))")
    p = subprocess.run([sys.executable, "-c", code, "validate", str(spec)], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 2
    assert f"{spec}: worker.memray: true needs memray" in p.stderr
    assert "pip install 'hpo-worker[memray]'" in p.stderr


def test_a_tracker_that_cannot_start_does_not_fail_the_trial(tmp_path, caplog):
    """In-process, real memray: the capture path is taken by a directory, so memray cannot
    write it; the body still runs, no peak is recorded, and a warning says why."""
    from hpo_worker.memprofile import MemoryProfiler

    prof = MemoryProfiler(tmp_path / "caps", keep=5)
    (tmp_path / "caps" / "s-t1-1.bin").mkdir()
    ran = []
    with prof.track("s-t1-1") as peak:
        ran.append(True)
    assert ran == [True] and peak.bytes is None
    assert "memray could not start" in caplog.text
    with prof.track("s-t2-1") as peak:  # the next one is tracked as usual
        block = bytearray(4 * MIB)
    assert 4 * MIB <= peak.bytes <= 4 * MIB + TOLERANCE and len(block) == 4 * MIB
