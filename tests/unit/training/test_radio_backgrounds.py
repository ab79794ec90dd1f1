"""train_radio --noise-data: simulated pulses on recorded noise of another digitiser (length, dtype, baseline,
sample period), a model the denoise pipeline serves, its card, and refusals."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from training import train_radio as tr  # noqa: E402
from trigger.backends import create_backend  # noqa: E402
from trigger.calibration import DenoiseCalibration, calibration_path_for, load_for_model  # noqa: E402
from trigger.pipelines.denoise import DenoisePipeline  # noqa: E402
from trigger.runfile import write_run  # noqa: E402

pytestmark = pytest.mark.train

SAMPLES, PERIOD, BASELINE, RMS = 750, 0.8, 2048.0, 20.0  # not the simulator's 500 samples at 1 ns, RMS 1


def radio_noise(n: int, seed: int = 0) -> np.ndarray:
    """int16 traces of a digitiser unlike the simulator's: 1.25 GS/s, a baseline of 2048 ADU, coloured noise
    of 20 ADU RMS falling as 1/f in 20-200 MHz and a pick-up line at 47.3 MHz."""
    rng = np.random.default_rng(seed)
    f = np.fft.rfftfreq(SAMPLES, PERIOD * 1e-3)
    shape = np.where((f > 20) & (f < 200), 20.0 / np.maximum(f, 1.0), 0.05)
    spec = (rng.standard_normal((n, len(f))) + 1j * rng.standard_normal((n, len(f)))) * shape
    x = np.fft.irfft(spec, n=SAMPLES, axis=1)
    x *= RMS / x.std()
    t = np.arange(SAMPLES) * PERIOD * 1e-3
    x += 0.8 * RMS * np.cos(2 * np.pi * 47.3 * t + rng.uniform(0, 2 * np.pi, (n, 1)))
    return np.round(BASELINE + x).astype(np.int16)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("radio_bg")
    rec = write_run(d / "antenna_noise.h5", radio_noise(600), units="adu", sample_period_ns=PERIOD)
    model = d / "radio_antenna.onnx"
    metrics = tr.run(tr.PROFILES["quick"], d / "run", export=model, threads=1, progress=False, plots=False,
                     command="pytest radio --noise-data", noise_data=[rec])
    return rec, model, metrics


def test_recorded_noise_sets_length_baseline_and_period_and_the_dae_beats_the_input(trained):
    rec, model, m = trained
    c = m["model_config"]
    assert c["n_samples"] == SAMPLES and c["sample_period_ns"] == PERIOD
    assert abs(c["pedestal"] - BASELINE) < 2  # the median sample, learned from the recording
    assert m["onnx"]["max_scaled_diff"] < 1e-4
    mse, noisy = m["test_mse"]["recorded"], m["test_mse_noisy_input"]["recorded"]
    assert mse < 0.9 * noisy, (mse, noisy)  # held-out recorded noise under simulated pulses
    cal = load_for_model(model, kind=DenoiseCalibration)
    assert cal.event_shape == (SAMPLES,) and cal.noise_model == "recorded"
    assert cal.validation_mse["recorded"] == pytest.approx(mse, rel=1e-3)


def test_served_model_takes_int16_counts_and_answers_on_the_baseline(trained):
    _, model, _ = trained
    cal = load_for_model(model, kind=DenoiseCalibration)
    pipe = DenoisePipeline(create_backend("onnxruntime", model, threads=1), cal)
    assert pipe.input_kind == "waveform" and pipe.event_shape == (SAMPLES,)
    x = radio_noise(6, seed=9).astype(np.float32)  # what the daemon hands the pipeline: the samples as float32
    out = pipe.decide(x)["data"]
    assert out.shape == (6, SAMPLES) and out.dtype == np.float32
    assert abs(float(np.median(out)) - BASELINE) < 5  # denoised traces in the input's units, on its baseline


def test_card_records_files_splits_command_and_seeds(trained):
    rec, model, _ = trained
    training = json.loads(calibration_path_for(model).read_text())["training"]
    (f,) = training["data"]
    assert f["sha256"] == hashlib.sha256(rec.read_bytes()).hexdigest() and f["name"] == rec.name
    assert f["events"]["train"] == 360 and set(f["events"]) == {"train", "validation", "calibration", "test"}
    assert f["events"]["test"] == tr.PROFILES["quick"].n_test  # the test traces actually used
    assert training["command"] == "pytest radio --noise-data" and training["seeds"] == tr.SEEDS
    assert training["noise_data"]["sample_period_ns"] == PERIOD and training["noise_data"]["dtype"] == "int16"


def test_unusable_noise_data_is_refused_in_one_line(tmp_path):
    old = tmp_path / "r.onnx"
    old.write_bytes(b"the existing model")
    short = write_run(tmp_path / "short.h5", np.zeros((50, 40), np.int16) + 7)
    frames = write_run(tmp_path / "frames.h5", np.zeros((50, 16, 16), np.uint16))
    flat = write_run(tmp_path / "flat.h5", np.full((50, 300), 100, np.int16))
    for what, path in {"too short": short, "images": frames, "constant": flat, "missing": tmp_path / "no.h5"}.items():
        with pytest.raises(SystemExit) as exc:
            tr.main(["--profile", "quick", "--runs", str(tmp_path / "runs"), "--export", str(old), "--no-progress",
                     "--noise-data", str(path)])
        msg = str(exc.value.code)
        assert msg.startswith("train_radio: error: ") and "\n" not in msg, (what, msg)
        assert old.read_bytes() == b"the existing model"
    assert not (tmp_path / "runs").exists()  # refused before anything was written
