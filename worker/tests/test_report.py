"""`hpo-worker report`: its table is what Optuna's own replay of the journal gives, whether the
journal is replayed whole or taken from the report's cache and only the new entries replayed:
after new trials, while trials run, after the journal shrank or changed, after a failover."""

import collections
import json
import subprocess
import sys

from conftest import PASSWORD, load_trials, start_worker, wait_for, worker_env, write_spec
from hpo_worker.journal import READ_CHUNK, iter_journal
from hpo_worker.reader import ReadOnlyStore
from hpo_worker.report import Tally, build, read_tally, render, run_report
from hpo_worker.report_cache import ReportCache

SPACE = {"x": {"type": "int", "low": 0, "high": 99}, "y": {"type": "int", "low": 0, "high": 4}}


def cli_report(endpoints, cache_dir, *extra):
    """(table lines without the timing line, stderr) of the CLI, with its debug log."""
    env = worker_env(cache_dir / "unused.jsonl", HPO_CACHE_DIR=str(cache_dir))
    p = subprocess.run([sys.executable, "-m", "hpo_worker", "report", "--endpoints", ",".join(endpoints),
                        "--log-level", "DEBUG", *extra], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[-1].startswith("report took ")
    return lines[:-1], p.stderr


def optuna_counts(trials):
    """The report's counts and per-host durations, from Optuna's replay (get_trials)."""
    c = collections.Counter()
    per = {}
    for t in trials:
        h = t.user_attrs.get("hpo") or {}
        if t.state.name == "COMPLETE":
            c["COMPLETE"] += 1
            if "reused_from" in h:
                c["reused"] += 1
            elif t.datetime_start and t.datetime_complete:
                c["evaluated"] += 1
                per.setdefault(str(h.get("host", "?")), []).append(
                    (t.datetime_complete - t.datetime_start).total_seconds())
        elif t.state.name == "PRUNED" and "duplicate_of" in h:
            c["duplicate_running"] += 1
        elif t.state.name in ("FAIL", "RUNNING", "WAITING"):
            c[t.state.name] += 1
    return c, per


def assert_agrees(endpoints, cache_dir, study, reader_endpoint=None):
    """Cached CLI == CLI replaying whole == in-process report == Optuna's replay. Returns the
    cached run's stderr and the in-process report."""
    cached, err = cli_report(endpoints, cache_dir, "--study", study)
    whole, _ = cli_report(endpoints, cache_dir, "--study", study, "--no-cache")
    assert cached == whole
    store = ReadOnlyStore(endpoints, password=PASSWORD)
    store.elect(wait=5)
    (rep,), _ = run_report(store.writer, store, study)
    assert render([rep], 0).splitlines()[:-1] == whole
    counts, per = optuna_counts(load_trials(reader_endpoint or endpoints[0], study))
    assert rep.counts == {k: counts.get(k, 0) for k in rep.counts}, (rep.counts, counts)
    assert sorted(h.host for h in rep.hosts) == sorted(per)
    for h in rep.hosts:
        v = sorted(per[h.host])
        assert h.count == len(v)
        assert abs(h.mean - sum(v) / len(v)) < 1e-6
        mid = len(v) // 2
        assert abs(h.median - (v[mid] if len(v) % 2 else (v[mid - 1] + v[mid]) / 2)) < 1e-6
    return err, rep


def test_report_cache_equals_optuna_after_appends_running_trials_and_a_shrink(servers, tmp_path):
    r = servers("rc")
    ep = [r.endpoint]
    cache = tmp_path / "cache"
    key = "hpo:journal:cached"

    def run(host, n, sleep=0.0, processes=2, wait=True):
        spec = write_spec(tmp_path / f"{host}.yaml", name="cached", space=SPACE, budget={"n_trials": n})
        p = start_worker(spec, ep, worker_env(tmp_path / "e.jsonl", sleep=sleep), host=host,
                         processes=processes, log=tmp_path / "w.log")
        if wait:
            assert p.wait(120) == 0, (tmp_path / "w.log").read_text()[-3000:]
        return p

    run("h1", 30, sleep=0.01)
    err, rep = assert_agrees(ep, cache, "cached")
    assert f"{key}: not in the cache" in err
    assert rep.counts["COMPLETE"] >= 30

    # new trials appended by another host: only they are replayed
    run("h2", 60, sleep=0.01)
    err, rep = assert_agrees(ep, cache, "cached")
    assert f"{key}: " in err and " entries from the cache, " in err, err
    new = int(err.split(" entries from the cache, ")[1].split()[0])
    assert new > 0
    assert {h.host for h in rep.hosts} == {"h1", "h2"}

    # a report while trials run: the cache keeps them open; they complete after
    p = run("h3", 70, sleep=3.0, processes=2, wait=False)
    wait_for(lambda: any(t.state.name == "RUNNING" for t in load_trials(r.endpoint, "cached")), 60,
             "a RUNNING trial")
    cached_running, _ = cli_report(ep, cache, "--study", "cached")
    running = int(cached_running[1].split("RUNNING ")[1].split(",")[0])
    assert p.wait(120) == 0, (tmp_path / "w.log").read_text()[-3000:]
    err, rep = assert_agrees(ep, cache, "cached")
    assert " entries from the cache, " in err, err
    assert running > 0 and rep.counts["RUNNING"] == 0 and "h3" in {h.host for h in rep.hosts}

    # the journal shrinks (what a standby that missed the last entries holds): replayed whole
    c = r.client()
    n = c.llen(key)
    c.ltrim(key, 0, n - 8)
    err, _ = assert_agrees(ep, cache, "cached")
    assert f"{key}: not the journal cached (it shrank or changed): replayed whole, {n - 7} entries" in err, err
    # ... then loses entries again and grows back beyond where the cache stopped, with other
    # entries (a master resynced from a peer that went on without it): replayed whole again
    attr, other = [x for x in c.lrange(key, 0, 300) if x.startswith('{"op_code": 8')][:2]  # finished trials'
    c.ltrim(key, 0, n - 14)
    c.rpush(key, *[attr] * 10)
    err, _ = assert_agrees(ep, cache, "cached")
    assert f"not the journal cached (it shrank or changed): replayed whole, {n - 3} entries" in err, err
    # ... or holds as many entries as cached, the last one another
    c.lset(key, -1, other)
    err, _ = assert_agrees(ep, cache, "cached")
    assert f"not the journal cached (it shrank or changed): replayed whole, {n - 3} entries" in err, err

    # The tally resumed from a saved copy at any point equals one pass over the journal
    raws = list(iter_journal(c, key))
    whole = build(raws, "cached")
    store = ReadOnlyStore(ep, password=PASSWORD)
    store.elect(wait=5)
    saves = ReportCache(tmp_path / "splits", "test", "source")
    for cut in range(0, len(raws) + 1, max(1, len(raws) // 23)):
        saves.save(key, Tally().feed(raws[:cut]))
        resumed = saves.load(key)
        assert resumed is not None and resumed.pos == cut
        resumed.feed(raws[cut:])
        assert resumed.reports("cached") == whole, cut
        assert len(resumed.replay.trials) == len(Tally().feed(raws).replay.trials)
    # ... and so does read_tally from the store, given a saved tally
    saves.save(key, Tally().feed(raws[: len(raws) // 2]))
    tally, fed = read_tally(store.writer, key, saves.load(key))
    assert fed and tally.pos == len(raws) and tally.reports("cached") == whole
    assert read_tally(store.writer, key, tally) == (tally, False)  # up to date: nothing to replay


def test_report_cache_is_not_used_after_a_failover(servers, tmp_path):
    """Primary + replica; the report is cached; the primary dies, a worker promotes the
    replica and adds trials: the report replays the new writer's journal whole."""
    a = servers("fa")
    b = servers("fb", replicaof=a)
    eps = [a.endpoint, b.endpoint]
    cache = tmp_path / "cache"

    def run(host, n):
        spec = write_spec(tmp_path / f"{host}.yaml", name="fo", space=SPACE, budget={"n_trials": n},
                          worker={"heartbeat_interval": 0.3, "heartbeat_ttl": 1.5})
        p = start_worker(spec, eps, worker_env(tmp_path / "e.jsonl", sleep=0.01), host=host, log=tmp_path / "w.log")
        assert p.wait(120) == 0, (tmp_path / "w.log").read_text()[-3000:]

    run("h1", 20)
    wait_for(lambda: b.client().llen("hpo:journal:fo") == a.client().llen("hpo:journal:fo"), 10, "the replica")
    err, _ = assert_agrees(eps, cache, "fo")
    assert "not in the cache" in err
    record_before = a.client().get("hpo:writer")
    a.kill()
    run("h2", 35)
    assert b.client().get("hpo:writer") != record_before
    err, rep = assert_agrees(eps, cache, "fo", reader_endpoint=b.endpoint)
    assert "the writer is" in err and "replayed whole" in err, err
    assert {h.host for h in rep.hosts} == {"h1", "h2"}


def test_report_reads_long_journals_in_chunks(servers, tmp_path):
    """More entries than one LRANGE chunk, cached then appended across a chunk boundary."""
    r = servers("ch")
    c = r.client()
    key = "hpo:journal:big"
    create = json.dumps({"op_code": 0, "worker_id": "w", "study_name": "big", "directions": [1]})

    def trial(i):
        start = f"2026-11-01T00:{i // 60 % 60:02d}:{i % 60:02d}.000000+00:00"
        end = f"2026-11-01T01:{i // 60 % 60:02d}:{i % 60:02d}.{i % 997:06d}+00:00"
        return [json.dumps({"op_code": 4, "worker_id": "w", "study_id": 0, "datetime_start": start}),
                json.dumps({"op_code": 8, "worker_id": "w", "trial_id": i,
                            "user_attr": {"hpo": {"host": f"h{i % 3}", "pid": 1, "token": f"w/{i}"}}}),
                json.dumps({"op_code": 6, "worker_id": "w", "trial_id": i, "state": 1, "values": [0.5],
                            "datetime_complete": end})]

    n1 = READ_CHUNK // 3 + 5  # trials: 3 entries each, past one chunk
    c.rpush(key, create, *[e for i in range(n1) for e in trial(i)])
    c.sadd("hpo:studies", "big")
    c.set("hpo:writer", f"1 {r.endpoint}")
    cache = tmp_path / "cache"
    first, err = cli_report([r.endpoint], cache)
    assert "not in the cache" in err and f"COMPLETE: {n1}  (evaluated {n1}," in first[1]
    n2 = n1 + READ_CHUNK // 2
    c.rpush(key, *[e for i in range(n1, n2) for e in trial(i)])
    cached, err = cli_report([r.endpoint], cache)
    assert f"{1 + 3 * n1} entries from the cache, {3 * (n2 - n1)} new" in err, err
    whole, _ = cli_report([r.endpoint], cache, "--no-cache")
    assert cached == whole and f"COMPLETE: {n2}  (evaluated {n2}," in whole[1]


def test_report_and_trials_import_neither_redis_py_nor_optuna(servers, tmp_path):
    """Their start-up is most of a cached report's time: redis-py's import alone took longer
    than the whole cached report of 8 studies x 8,000 trials (benchmarks/RESULTS.md)."""
    r = servers("imp")
    spec = write_spec(tmp_path / "s.yaml", name="imp", budget={"n_trials": 3})
    p = start_worker(spec, [r.endpoint], worker_env(tmp_path / "e.jsonl"), log=tmp_path / "w.log")
    assert p.wait(60) == 0, (tmp_path / "w.log").read_text()[-2000:]
    code = ("import sys\nfrom hpo_worker.cli import main\n"
            "for argv in (['report'], ['trials', '--json']):\n"
            f"    assert main([*argv, '--endpoints', '{r.endpoint}']) == 0\n"
            "print(sorted(m for m in ('redis', 'optuna', 'asyncio') if m in sys.modules))\n")
    env = worker_env(tmp_path / "e.jsonl", HPO_CACHE_DIR=str(tmp_path / "cache"))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "COMPLETE: 3 " in out.stdout
    assert out.stdout.splitlines()[-1] == "[]", out.stdout
