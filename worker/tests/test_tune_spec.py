"""Tune experiment specs (hpo_worker.tune_spec): each bad field gives an error naming the file and the field.
Unit tests: no Ray, no store."""

from __future__ import annotations

from pathlib import Path

import conftest
import pytest
import yaml
from conftest import DELETE
from hpo_worker.spec import SpecError
from hpo_worker.tune_spec import load_tune_spec, parse_tune_spec

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "tune-digits"

BASE = {
    "name": "exp",
    "objective": "pkg.mod:train",
    "metric": "accuracy",
    "direction": "maximize",
    "epochs": 6,
    "space": {"lr": {"type": "float", "low": 0.001, "high": 0.1, "log": True},
              "hidden": {"type": "int", "low": 16, "high": 64, "step": 16}},
    "budget": {"n_trials": 4},
    "search": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
}


def spec_with(**changes):
    return conftest.spec_with(BASE, **changes)




def test_examples_are_valid():
    specs = {p.stem: load_tune_spec(p) for p in sorted(EXAMPLES.glob("*.yaml"))}
    assert {s.search["type"] for s in specs.values()} == {"random", "asha", "optuna", "optuna+asha", "pbt"}
    assert specs["asha"].search == {"type": "asha", "seed": 3, "grace_period": 2, "reduction_factor": 2, "max_t": 12}
    assert specs["optuna"].sampler["type"] == "tpe" and specs["optuna"].sampler["seed"] == 3
    assert specs["pbt"].search["hyperparam_mutations"] == {"lr": None, "alpha": None}
    assert specs["random"].resources == {"cpu": 1.0}


def test_defaults():
    s = parse_tune_spec(spec_with(search="asha", resources_per_trial={"gpu": 0.25, "fast_disk": 1}), "e.yaml")
    assert s.search == {"type": "asha", "max_t": 6, "grace_period": 1, "reduction_factor": 2}
    assert s.resources == {"gpu": 0.25, "fast_disk": 1.0, "cpu": 1.0}
    assert s.mode == "max" and s.sampler is None
    o = parse_tune_spec(spec_with(search={"type": "optuna"}), "e.yaml")
    assert o.sampler == {"type": "tpe", "constant_liar": True}


BAD = [
    (dict(name="a b"), "name"),
    (dict(direction="up"), "direction"),
    (dict(metric=DELETE), "metric"),
    (dict(objective="nocolon"), "objective"),
    (dict(space__lr__low=-1), "space.lr.low"),
    (dict(space__hidden__step=7), "space.hidden.step"),
    (dict(budget=DELETE), "budget"),
    (dict(budget__n_trials=0), "budget.n_trials"),
    (dict(budget__timeout="long"), "budget.timeout"),
    (dict(budget__extra=1), "budget.extra"),
    (dict(epochs=DELETE), "epochs"),
    (dict(epochs=2.5), "epochs"),
    (dict(search=DELETE), "search"),
    (dict(search__type="bayes"), "search.type"),
    (dict(search__grace_period=0), "search.grace_period"),
    (dict(search__grace_period=7), "search.grace_period"),
    (dict(search__reduction_factor=1), "search.reduction_factor"),
    (dict(search__max_t=7), "search.max_t"),
    (dict(search__perturbation_interval=2), "search.perturbation_interval"),
    (dict(search__seed=-1), "search.seed"),
    (dict(search={"type": "pbt", "hyperparam_mutations": ["lr"]}), "search.perturbation_interval"),
    (dict(search={"type": "pbt", "perturbation_interval": 6, "hyperparam_mutations": ["lr"]}),
     "search.perturbation_interval"),
    (dict(search={"type": "pbt", "perturbation_interval": 2}), "search.hyperparam_mutations"),
    (dict(search={"type": "pbt", "perturbation_interval": 2, "hyperparam_mutations": ["momentum"]}),
     "search.hyperparam_mutations.momentum"),
    (dict(search={"type": "pbt", "perturbation_interval": 2, "hyperparam_mutations": {"lr": []}}),
     "search.hyperparam_mutations.lr"),
    (dict(search={"type": "pbt", "perturbation_interval": 2, "hyperparam_mutations": ["lr"],
                  "quantile_fraction": 0.7}), "search.quantile_fraction"),
    (dict(search={"type": "pbt", "perturbation_interval": 2, "hyperparam_mutations": ["lr"],
                  "resample_probability": 2}), "search.resample_probability"),
    (dict(search={"type": "pbt", "perturbation_interval": 2, "hyperparam_mutations": ["lr"], "synch": "yes"}),
     "search.synch"),
    (dict(sampler={"type": "tpe"}), "sampler"),  # asha: no sampler
    (dict(search="optuna", sampler={"type": "nsga3"}), "sampler.type"),
    (dict(search="optuna", sampler={"type": "tpe", "seed": "x"}), "sampler.seed"),
    (dict(search="optuna", sampler={"type": "tpe", "n_startup_trials": 0}), "sampler.n_startup_trials"),
    (dict(search="optuna", sampler={"type": "random", "constant_liar": True}), "sampler.constant_liar"),
    (dict(resources_per_trial={"gpu": 1.5}), "resources_per_trial.gpu"),
    (dict(resources_per_trial={"cpu": -1}), "resources_per_trial.cpu"),
    (dict(resources_per_trial={"cpu": "one"}), "resources_per_trial.cpu"),
    (dict(resources_per_trial={"fast_disk": 0}), "resources_per_trial.fast_disk"),
    (dict(resources_per_trial={"cpu": 0}), "resources_per_trial.cpu"),
    (dict(resources_per_trial=[1]), "resources_per_trial"),
    (dict(max_concurrent_trials=0), "max_concurrent_trials"),
    (dict(storage_path="relative/dir"), "storage_path"),
    (dict(workers=3), "workers"),
]


@pytest.mark.parametrize("changes,field", BAD, ids=[f"{f}-{i}" for i, (_, f) in enumerate(BAD)])
def test_bad_field_names_file_and_field(changes, field):
    with pytest.raises(SpecError) as exc:
        parse_tune_spec(spec_with(**changes), "exp.yaml")
    assert str(exc.value).startswith(f"exp.yaml: {field}: "), str(exc.value)


def test_file_errors(tmp_path):
    with pytest.raises(SpecError, match=r"missing\.yaml: cannot read"):
        load_tune_spec(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match=r"bad\.yaml: not valid YAML"):
        load_tune_spec(bad)
    ok = tmp_path / "ok.yaml"
    ok.write_text(yaml.safe_dump(BASE))
    assert load_tune_spec(ok).name == "exp"


def test_cli_validate(capsys):
    from hpo_worker.tune_submit import main

    assert main(["validate", *map(str, sorted(EXAMPLES.glob("*.yaml")))]) == 0
    assert "tune-digits-pbt: search pbt" in capsys.readouterr().out


def test_cli_submit_refuses_a_bad_spec_before_sending(tmp_path, capsys):
    from hpo_worker.tune_submit import main

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(spec_with(search__reduction_factor=0.5)))
    # the address is unreachable on purpose: a bad spec must be refused before any connection
    assert main(["submit", str(bad), "--code-dir", str(tmp_path), "--address", "http://127.0.0.1:9"]) == 2
    assert f"{bad}: search.reduction_factor: must be > 1" in capsys.readouterr().err


def test_cli_submit_refuses_a_relative_storage_path(tmp_path, capsys, monkeypatch):
    from hpo_worker.tune_submit import main

    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(spec_with()))
    monkeypatch.setenv("HPO_KEYDB_ENDPOINTS", "127.0.0.1:9")
    # refused before any connection (the address is unreachable on purpose)
    assert main(["submit", str(good), "--code-dir", str(tmp_path), "--address", "http://127.0.0.1:9",
                 "--storage-path", "shared/tune"]) == 2
    assert "--storage-path: must be an absolute path" in capsys.readouterr().err
