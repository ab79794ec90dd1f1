"""train_pulse --data: any trace length and dtype in the graph, splits, a servable model, refusals, the card."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from training import pulse_recorded as pr  # noqa: E402
from training import train_pulse  # noqa: E402
from training.core.recorded import SplitFractions  # noqa: E402
from training.core.runtime import OrtRunner  # noqa: E402
from training.export import export_onnx  # noqa: E402
from training.vcae import VCAE, VCAEConfig, padded_length  # noqa: E402
from trigger.calibration import PulseCalibration, load_for_model  # noqa: E402

from .conftest import FOREIGN_SAMPLES, write_foreign  # noqa: E402

pytestmark = pytest.mark.train

TINY = pr.DataProfile("tiny", epochs=4, max_train_seconds=60.0, batch_size=64,
                      fractions=SplitFractions(0.35, 0.1, 0.3), n_select=600, n_eff=4000, eff_bins=8,
                      amp_range=(0.5, 500.0), buffer_events=512)


@pytest.mark.parametrize("length", [256, 700, 1024, 2500])
def test_any_length_is_padded_in_the_graph_and_onnx_matches_torch(tmp_path, length):
    n = padded_length(length)
    assert n % 512 == 0 and 0 <= n - length < 512
    torch.manual_seed(0)
    model = VCAE(VCAEConfig(n_samples=n, trace_samples=length, input_offset=3.0, input_scale=2.0)).eval()
    x = (3.0 + 2.0 * np.random.default_rng(length).normal(size=(40, length))).astype(np.float32)
    path = tmp_path / "m.onnx"
    info = export_onnx(model, path, pt2=False, check=x)
    assert info["max_abs_diff"] <= 1e-4
    runner = OrtRunner(path)
    import onnxruntime as ort

    shape = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_inputs()[0].shape
    assert shape[1] == length
    # Padding = the trace continued with its pedestal: the same weights on the explicitly padded trace agree.
    full = VCAE(VCAEConfig(n_samples=n, input_offset=3.0, input_scale=2.0)).eval()
    full.load_state_dict(model.state_dict())
    padded = np.concatenate([x, np.full((len(x), n - length), 3.0, np.float32)], axis=1)
    with torch.no_grad():
        ref = full.encoder(torch.from_numpy(padded))[0].numpy()
    np.testing.assert_allclose(runner(x), ref, atol=1e-4)
    # The reconstruction loss counts the recorded samples only.
    recon, _, _ = model(torch.from_numpy(x))
    assert recon.shape == (40, n)


def test_int16_counts_are_normalised_inside_the_graph(tmp_path):
    rng = np.random.default_rng(0)
    counts = np.clip(np.rint(1000 + 20 * rng.normal(size=(300, 700))), -32768, 32767).astype(np.int16)
    stats = pr.noise_statistics(counts)
    assert stats["pedestal"] == pytest.approx(1000, abs=2) and stats["scale"] == pytest.approx(20, rel=0.1)
    torch.manual_seed(1)
    cfg = VCAEConfig(n_samples=1024, trace_samples=700, input_offset=stats["pedestal"], input_scale=stats["scale"])
    model = VCAE(cfg).eval()
    export_onnx(model, tmp_path / "m.onnx", pt2=False, check=counts[:32].astype(np.float32))
    z = OrtRunner(tmp_path / "m.onnx")(counts.astype(np.float32))  # the daemon's as_float32 of int16: no scaling
    # The same network without the constants, fed by hand-normalised samples, gives the same latent means.
    plain = VCAE(dataclasses.replace(cfg, input_offset=0.0, input_scale=1.0)).eval()
    plain.load_state_dict({**model.state_dict(), "encoder.offset": torch.tensor(0.0),
                           "encoder.scale": torch.tensor(1.0)})
    by_hand = (counts.astype(np.float32) - np.float32(stats["pedestal"])) / np.float32(stats["scale"])
    np.testing.assert_allclose(z, pr.encode_torch(plain, by_hand), atol=1e-4)


def test_injection_adds_the_template_inside_the_trace():
    t = pr.default_template(2500)
    assert t.max() == pytest.approx(1.0) and len(t) < 2500 and t[0] < 0.01 and t[-1] < 2e-3
    noise = np.zeros((50, 700), np.float32)
    out = pr.inject(noise, np.full(50, 3.0), t[:100], np.random.default_rng(0))
    assert np.allclose(out.max(axis=1), 3.0 * t[:100].max()) and np.allclose(out.sum(axis=1), 3.0 * t[:100].sum())


@pytest.fixture(scope="module")
def trained(foreign_noise, tmp_path_factory):
    """The tiny profile on the foreign recording, streamed from disk (memory budget 0)."""
    out = tmp_path_factory.mktemp("model")
    profile = dataclasses.replace(TINY, memory_budget=0)
    metrics = pr.run([foreign_noise], out / "foreign.onnx", profile, out / "run", seed=0, threads=1,
                     command="pytest")
    return out / "foreign.onnx", metrics


def test_trained_model_serves_and_holds_its_fpr_on_unseen_noise(trained, tmp_path):
    from trigger.backends import create_backend
    from trigger.pipelines.pulse import PulsePipeline

    model, metrics = trained
    assert not metrics["in_memory"]
    cal = load_for_model(model, kind=PulseCalibration)
    assert cal.n_samples == FOREIGN_SAMPLES and "fpr_0.01" in cal.working_points
    # Fresh noise of the same detector (another seed), decided by the daemon's own pipeline class.
    fresh = write_foreign(tmp_path / "fresh.h5", 4000, seed=99)
    from trigger.runfile import open_run

    with open_run(fresh) as r:
        data, _ = r.read()
    pipe = PulsePipeline(create_backend("onnxruntime", model, threads=1), cal)
    from trigger.protocol import as_float32

    accept = pipe.decide(as_float32(data))["accept"]
    fpr, err = accept.mean(), np.sqrt(0.01 * 0.99 / len(accept))
    assert abs(fpr - 0.01) < 4 * err + 0.002, fpr
    trig = metrics["trigger"]
    assert abs(trig["fpr_measured"] - 0.01) < 4 * trig["fpr_error"] + 0.002
    eff = np.asarray(trig["efficiency"]["efficiency"])
    assert eff[-2:].mean() > 0.9 and eff[:2].mean() < 0.3  # rises with amplitude
    assert trig["matched_filter"]["a50_sigma"] > 0 and trig["a50_ratio_to_matched_filter"] > 0
    assert np.isfinite(trig["a50_sigma"]) and trig["a50_adc"] == pytest.approx(trig["a50_sigma"]
                                                                               * metrics["noise"]["rms"])


def test_card_records_data_splits_command_and_seeds(trained, foreign_noise):
    model, metrics = trained
    card = json.loads(model.with_name("foreign.card.json").read_text())
    train = card["training"]
    (f,) = train["data"]
    assert f["name"] == foreign_noise.name
    assert f["sha256"] == hashlib.sha256(foreign_noise.read_bytes()).hexdigest()
    assert f["events"] == train["events_per_split"] == metrics["events_per_split"]
    assert train["signal_rows_dropped_train_calibration"] > 0  # the recording's signal rows (truth) left out
    assert counts_ok(train)
    counts = train["events_per_split"]
    assert counts["calibration"] == load_for_model(model, kind=PulseCalibration).n_noise
    assert train["command"] == "pytest" and train["seeds"]["split"] == pr.SEEDS["split"]
    assert train["profile"]["name"] == "tiny" and "padded" in train["trace"]["pad_or_crop"]
    assert card["input"]["shape"] == ["batch", FOREIGN_SAMPLES]
    assert card["model_sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()


def counts_ok(train: dict) -> bool:
    used, assigned = train["events_per_split"], train["rows_assigned_per_split"]
    return all(used[s] <= assigned[s] for s in used) and sum(assigned.values()) == 4400


def _refusal(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        train_pulse.main(argv)
    msg = str(exc.value.code)
    assert msg.startswith("train_pulse: error: ") and "\n" not in msg
    return msg


def test_refusals_are_one_line_and_leave_an_existing_model_alone(tmp_path, capsys):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"the old model")
    base = ["--export", str(out), "--runs", str(tmp_path / "runs"), "--profile", "quick"]
    assert "missing.h5" in _refusal(["--data", str(tmp_path / "missing.h5"), *base], capsys)
    other = tmp_path / "other.h5"
    import h5py

    with h5py.File(other, "w") as f:  # HDF5, but not the trigger.run layout
        f["x"] = np.zeros(3)
    assert "not a trigger recording" in _refusal(["--data", str(other), *base], capsys)
    short = write_foreign(tmp_path / "short.h5", 100, seed=1, n_samples=200)
    assert "at least 256" in _refusal(["--data", str(short), *base], capsys)
    a = write_foreign(tmp_path / "a.h5", 100, seed=1, n_samples=300)
    b = write_foreign(tmp_path / "b.h5", 100, seed=1, n_samples=400)
    assert "event shape" in _refusal(["--data", str(a), "--data", str(b), *base], capsys)
    few = write_foreign(tmp_path / "few.h5", 500, seed=1, n_samples=300)
    assert "too few" in _refusal(["--data", str(few), *base], capsys)
    text = tmp_path / "text.h5"
    text.write_text("not hdf5")
    _refusal(["--data", str(text), *base], capsys)
    assert out.read_bytes() == b"the old model"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no scratch left


def test_cli_refusal_is_one_line_on_stderr_with_a_nonzero_exit(tmp_path):
    r = subprocess.run([sys.executable, "-m", "training.train_pulse", "--data", str(tmp_path / "missing.h5"),
                        "--export", str(tmp_path / "m.onnx"), "--runs", str(tmp_path)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("train_pulse: error:"), r.stderr
    assert not (tmp_path / "m.onnx").exists()


def test_signal_template_file_is_checked_and_scaled(tmp_path):
    good = tmp_path / "pulse.npy"
    np.save(good, -3.0 * np.exp(-np.arange(80) / 20.0))  # a negative-going pulse keeps its sign
    t = pr.load_template(good, 700)
    assert t.min() == pytest.approx(-1.0) and len(t) == 80
    for bad in (np.zeros(10), np.ones((3, 3)), np.ones(701), np.array([1.0, np.nan])):
        np.save(tmp_path / "bad.npy", bad)
        with pytest.raises(pr.DataError, match="--signal-template"):
            pr.load_template(tmp_path / "bad.npy", 700)
    (tmp_path / "junk.npy").write_text("junk")
    with pytest.raises(pr.DataError, match="cannot read"):
        pr.load_template(tmp_path / "junk.npy", 700)
