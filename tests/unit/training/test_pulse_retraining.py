"""benchmarks/pulse_retraining.py: seed variants of a candidate, the best-of-K-seeds pick, the previous shipped
model."""

from __future__ import annotations

import dataclasses
import json

import pytest

from tests.unit.simulators.conftest import load_benchmark
from trigger.calibration import sha256_file


@pytest.fixture
def pr(monkeypatch):
    """benchmarks/pulse_retraining.py as a module."""
    return load_benchmark(monkeypatch, "pulse_retraining")


@pytest.mark.parametrize("seed", range(2, 10))
def test_seed_variant_changes_only_the_seed(pr, seed):
    base = pr.CANDIDATES["free_bits20"]
    c = pr.candidate(f"free_bits20_s{seed}")
    assert c.seed == seed
    assert dataclasses.replace(c, seed=base.seed, description=base.description) == base
    assert pr.seed_name("free_bits20", seed) == f"free_bits20_s{seed}"
    assert pr.candidate(pr.seed_name("free_bits20", seed)) == c


def test_seed_one_is_the_candidate_itself(pr):
    assert pr.seed_name("free_bits20", 1) == "free_bits20"
    assert pr.candidate("free_bits20").seed == 1
    with pytest.raises(KeyError):
        pr.candidate("free_bits20_s1")  # seed 1 has one name only


def test_seed_groups_are_disjoint_and_of_three(pr):
    for groups in pr.SEED_GROUPS.values():
        seeds = [k for g in groups for k in g]
        assert len(seeds) == len(set(seeds))
        assert all(len(g) == 3 for g in groups)


def test_best_of_picks_the_lowest_validation_a50_not_the_best_test(pr):
    members = ["a", "b", "c"]
    val = {"a": 0.027, "b": 0.021, "c": 0.025}
    ratio = {"a": {"ratio": 0.90, "interval_68": [0.85, 0.95]},
             "b": {"ratio": 0.98, "interval_68": [0.95, 1.02]},
             "c": {"ratio": 1.20, "interval_68": [1.10, 1.25]}}
    g = pr.best_of(members, val, ratio)
    assert g["pick"] == "b"
    assert g["pick_ratio"] == ratio["b"]
    assert not g["pick_is_test_best"]
    assert g["mean_ratio"] == pytest.approx((0.90 + 0.98 + 1.20) / 3)
    assert (g["worst"], g["worst_ratio"]) == ("c", 1.20)
    assert g["met"] is False  # the pick's interval reaches above 1.0
    val["b"], val["c"] = 0.030, 0.031
    assert pr.best_of(members, val, ratio)["met"] is True  # now picks "a": [0.85, 0.95]


def test_previous_shipped_is_the_yardstick_not_the_shipped_model(pr):
    assert sha256_file(pr.PREVIOUS_SHIPPED) == pr.PREVIOUS_SHIPPED_SHA256
    assert sha256_file(pr.DEFAULT_MODEL) != pr.PREVIOUS_SHIPPED_SHA256
    assert pr.PREV in pr.ENSEMBLES["ensemble_controls3"]
    assert "shipped" not in {m for members in pr.ENSEMBLES.values() for m in members}


def test_physics_ratio_reads_the_named_result_and_skips_a_physics_json_of_another_model(pr, tmp_path):
    assert pr.physics_ratio("no_such_run", tmp_path) is None
    other = {"model": {"sha256": "0" * 64},
             "ratios": {"vcae/matched_filter": {"ratio": 0.9, "interval_68": [0.8, 1.0]}},
             "fpr_actual": {"vcae": {"fpr": 0.0101}}}
    (tmp_path / "physics.json").write_text(json.dumps(other))
    assert pr.physics_ratio("free_bits20_s9", tmp_path) is None  # physics.json scored another file
    mine = {**other, "ratios": {"vcae/matched_filter": {"ratio": 1.08, "interval_68": [1.07, 1.09]}}}
    (tmp_path / "physics_free_bits20_s9.json").write_text(json.dumps(mine))
    r = pr.physics_ratio("free_bits20_s9", tmp_path)
    assert (r["ratio"], r["interval_68"], r["fpr"]) == (1.08, [1.07, 1.09], 0.0101)


def test_the_shipped_profile_is_the_recipe_of_the_shipped_model(pr):
    """`train_pulse --profile shipped --seed 9` trains what `pulse_retraining.py --train fb20_many_starts_s9` trained
    (the shipped model): the same profile but its name, and the same initialisation seeds."""
    from training import pulse_simulated as ps

    shipped = ps.PROFILES["shipped"]
    assert dataclasses.replace(pr.training_profile("fb20_many_starts_s9"), name="shipped") == shipped
    assert pr.candidate("fb20_many_starts_s9").seed == 9 and pr.candidate("fb20_many_starts_s9").fold == 0
    # the recipe as the shipped model's training recorded it (runs/pulse_retraining/fb20_many_starts_s9/train.json,
    # not in git): a default of Profile that changed would move both sides above, not this
    assert {k: v for k, v in dataclasses.asdict(shipped).items() if k != "name"} == {
        "n_trainval": 7500, "n_test": 7500, "folds": 5, "folds_trained": 1, "n_init": 12, "init_epochs": 3,
        "epochs": 3, "batch_size": 32, "lr": 0.001, "latent_dim": 2, "variant": "fixed", "n_calib": 100000,
        "n_eff": 20000, "n_fpr": 100000, "selection": "a50", "input_scale": "std", "beta": 1.0, "recon": "sse",
        "recon_delta": 1.0, "free_bits": 20.0, "fresh_amplitudes": None}
    provenance = json.loads((pr.REPO / "trigger/models/pulse_default.calib.json").read_text())["provenance"]
    # the shipped file's route (a model exported by train_pulse itself records its command instead)
    assert "fb20_many_starts_s9" in provenance.get("checkpoint", "") + provenance.get("command", "")
