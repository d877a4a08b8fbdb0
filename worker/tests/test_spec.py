"""Spec parsing, validation messages and grid stepping (unit tests, no store)."""

import subprocess
import sys

import conftest
import pytest
import yaml
from conftest import DELETE
from hpo_worker.spec import SpecError, load_spec, params_fingerprint, parse_spec

BASE = {
    "name": "s1",
    "direction": "maximize",
    "sampler": {"type": "tpe", "constant_liar": True, "n_startup_trials": 7, "n_ei_candidates": 50, "seed": 3},
    "space": {
        "n": {"type": "int", "low": 1, "high": 9, "step": 2},
        "lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
        "act": {"type": "categorical", "choices": ["relu", "tanh"]},
    },
    "budget": {"n_trials": 10, "timeout": 60},
    "objective": "pkg.mod:fn",
}


def spec_with(**changes):
    return conftest.spec_with(BASE, **changes)


def test_valid_spec_builds_tpe_sampler_with_settings():
    s = parse_spec(spec_with(), "a.yaml")
    sampler = s.build_sampler()
    assert type(sampler).__name__ == "TPESampler"
    assert sampler._constant_liar is True
    assert sampler._n_startup_trials == 7 and sampler._n_ei_candidates == 50
    assert s.directions == ("maximize",) and s.n_trials == 10 and s.timeout == 60
    assert s.distributions()["n"].step == 2


@pytest.mark.parametrize("changes, field", [
    ({"name": "bad name!"}, "name"),
    ({"direction": "up"}, "direction"),
    ({"sampler__type": "cmaes"}, "sampler.type"),
    ({"sampler__n_startup_trials": -1}, "sampler.n_startup_trials"),
    ({"sampler__bogus": 1}, "sampler.bogus"),
    ({"space__n__low": "abc"}, "space.n.low"),
    ({"space__n__high": DELETE}, "space.n.high"),
    ({"space__n__step": 3}, "space.n.step"),
    ({"space__lr__low": 0}, "space.lr.low"),
    ({"space__act__choices": []}, "space.act.choices"),
    ({"space__act__type": "bool"}, "space.act.type"),
    ({"budget": {}}, "budget"),
    ({"budget__n_trials": 2.5}, "budget.n_trials"),
    ({"objective": "no_colon"}, "objective"),
    ({"space": {}}, "space"),
])
def test_invalid_spec_names_file_and_field(changes, field):
    with pytest.raises(SpecError) as e:
        parse_spec(spec_with(**changes), "studies/x.yaml")
    assert str(e.value).startswith(f"studies/x.yaml: {field}:"), str(e.value)


def test_nsga3_and_random_samplers():
    s = parse_spec(spec_with(sampler={"type": "nsga3", "population_size": 40, "seed": 1},
                             directions=["minimize", "maximize"], direction=DELETE), "b.yaml")
    smp = s.build_sampler()
    assert type(smp).__name__ == "NSGAIIISampler" and smp._population_size == 40
    assert s.directions == ("minimize", "maximize")
    assert type(parse_spec(spec_with(sampler="random"), "c.yaml").build_sampler()).__name__ == "RandomSampler"


def test_grid_points_computed_from_index_without_drift():
    d = spec_with(sampler={"type": "grid"}, space={
        "a": {"type": "float", "low": 0.0, "high": 1.0, "step": 0.1},
        "b": {"type": "int", "low": 0, "high": 10, "step": 5},
        "c": {"type": "categorical", "choices": ["x", "y"]}}, budget=DELETE)
    s = parse_spec(d, "g.yaml")
    a = s.grid_space()["a"]
    assert a == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    assert 0.30000000000000004 not in a and 0.3 in a
    assert s.grid_space()["b"] == [0, 5, 10]
    assert s.grid_size() == 11 * 3 * 2
    sampler = s.build_sampler()
    assert type(sampler).__name__ == "GridSampler"
    # a long axis: the last point is exact too
    p = parse_spec(spec_with(sampler={"type": "grid"}, budget=DELETE,
                             space={"z": {"type": "float", "low": 0.05, "high": 30.0, "step": 0.05}}), "g2.yaml")
    pts = p.grid_space()["z"]
    assert len(pts) == 600 and pts[-1] == 30.0 and pts[5] == 0.3


def test_grid_requires_step_and_a_multiple():
    with pytest.raises(SpecError, match="g.yaml: space.a.step: a grid needs a step"):
        parse_spec(spec_with(sampler={"type": "grid"}, space={"a": {"type": "float", "low": 0, "high": 1}}), "g.yaml")
    with pytest.raises(SpecError, match="space.a.step: .high - low. must be a multiple of step"):
        parse_spec(spec_with(space={"a": {"type": "float", "low": 0, "high": 1, "step": 0.3}}), "g.yaml")


def test_fingerprint_is_canonical():
    s = parse_spec(spec_with(space={"a": {"type": "float", "low": 0.0, "high": 1.0, "step": 0.1},
                                    "k": {"type": "categorical", "choices": [1, "1"]}}), "f.yaml")
    assert s.fingerprint({"a": 0.1 + 0.2, "k": 1}) == s.fingerprint({"k": 1, "a": 0.3})
    assert s.fingerprint({"a": 0.3, "k": 1}) != s.fingerprint({"a": 0.3, "k": "1"})
    assert params_fingerprint({"x": 1}) != params_fingerprint({"x": 1.0})


def test_validate_cli_exit_codes(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(spec_with()))
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(spec_with(space__n__low="x")))
    ok = subprocess.run([sys.executable, "-m", "hpo_worker", "validate", str(good)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "ok: study 's1'" in ok.stdout
    no = subprocess.run([sys.executable, "-m", "hpo_worker", "validate", str(bad)], capture_output=True, text=True)
    assert no.returncode == 2
    assert f"{bad}: space.n.low: must be an integer" in no.stderr
    # the objective is imported when a code dir is given
    imp = subprocess.run([sys.executable, "-m", "hpo_worker", "validate", str(good), "--code-dir", str(tmp_path)],
                         capture_output=True, text=True)
    assert imp.returncode == 2 and "objective: cannot import module 'pkg.mod'" in imp.stderr
    # run refuses a bad spec before touching any store
    run = subprocess.run([sys.executable, "-m", "hpo_worker", "run", str(bad), "--endpoints", "127.0.0.1:1"],
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 2 and "space.n.low" in run.stderr


def test_load_spec_missing_file(tmp_path):
    with pytest.raises(SpecError, match="cannot read the spec file"):
        load_spec(tmp_path / "nope.yaml")


def test_shipped_example_validates_and_imports():
    root = __import__("pathlib").Path(__file__).resolve().parent.parent / "examples"
    res = subprocess.run([sys.executable, "-m", "hpo_worker", "validate", str(root / "quadratic.yaml"),
                          "--code-dir", str(root)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "objective toy_objective:quadratic imports" in res.stdout


def test_seed_is_per_worker_but_stable():
    s = parse_spec(spec_with(sampler={"type": "random", "seed": 5}), "r.yaml")
    draw = lambda key: s.build_sampler(key)._rng.rng.randint(0, 10**9)  # noqa: E731
    assert draw("m8/0") == draw("m8/0")
    assert draw("m8/0") != draw("m8/1") != draw("m10/0")
