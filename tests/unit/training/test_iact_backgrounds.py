"""train_iact --task clean --noise-data: the cleaning U-net on a recorded night-sky background of another
camera (frame size, ADC units, pedestals), its calibration and card, the segment pipeline on it, refusals."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from training import train_iact as ta  # noqa: E402
from trigger.backends import create_backend  # noqa: E402
from trigger.calibration import SegmentCalibration, calibration_path_for, load_for_model  # noqa: E402
from trigger.pipelines.segment import SegmentPipeline  # noqa: E402
from trigger.runfile import write_run  # noqa: E402

pytestmark = pytest.mark.train

FRAME = (26, 38)  # not the simulator's 32 x 32, not a multiple of 2^depth
GAIN = 10.0  # ADU per p.e.


def nsb_frames(n: int, seed: int = 0) -> np.ndarray:
    """int16 frames: per-pixel pedestals around 400 ADU, night-sky light of 3 p.e. a pixel, 4 ADU of noise."""
    rng = np.random.default_rng(seed)
    ped = 400 + np.random.default_rng(98).normal(0, 20, FRAME)
    x = ped + GAIN * (rng.poisson(3.0, (n, *FRAME)) - 3.0) + rng.normal(0, 4, (n, *FRAME))
    return np.round(x).astype(np.int16)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("iact_bg")
    rec = write_run(d / "nsb_run.h5", nsb_frames(400), units="adu")
    model = d / "clean_camera.onnx"
    metrics = ta.run("clean", ta.PROFILES["clean"]["quick"], d / "run", export=model, progress=False, plots=False,
                     noise_data=[rec], signal_scale=GAIN, command="pytest iact --noise-data")
    return rec, model, metrics


def test_cleaning_learns_showers_on_the_recorded_background(trained):
    rec, model, m = trained
    assert m["test"]["auc"] > 0.8  # held-out recorded frames under simulated showers
    assert m["onnx"]["max_abs_diff"] < 1e-4
    cal = load_for_model(model, kind=SegmentCalibration)
    assert cal.event_shape == FRAME and cal.default_working_point == "f1_max"
    tail = cal.validation["tailcuts_tuned_on_calibration"]
    assert tail["picture"] > tail["boundary"] > 0 and tail["test"]["f1"] > 0.3  # tuned in p.e., above the pedestal
    training = json.loads(calibration_path_for(model).read_text())["training"]
    (f,) = training["data"]
    assert f["sha256"] == hashlib.sha256(rec.read_bytes()).hexdigest()
    assert f["events"]["train"] == 240 and f["events"]["calibration"] == ta.PROFILES["clean"]["quick"].n_calib
    assert training["command"] == "pytest iact --noise-data" and training["seeds"] == ta.SEEDS
    assert training["model_config"]["pe_scale"] > GAIN  # the recording's noise RMS, in ADU


def test_segment_pipeline_cleans_int16_frames_of_the_recording_shape(trained):
    _, model, _ = trained
    cal = load_for_model(model, kind=SegmentCalibration)
    pipe = SegmentPipeline(create_backend("onnxruntime", model, threads=1), cal,
                           calibration_path=calibration_path_for(model))
    out = pipe.decide(nsb_frames(5, seed=3).astype(np.float32))
    assert out["mask"].shape == (5, *FRAME) and out["hillas"].shape == (5, 10)


def test_noise_data_is_only_for_the_cleaning_task(tmp_path, trained):
    rec, _, _ = trained
    for task in ("classify", "cvae"):
        with pytest.raises(SystemExit, match=f"train_iact: error: --noise-data trains --task clean .* not {task}"):
            ta.main(["--task", task, "--runs", str(tmp_path), "--no-progress", "--noise-data", str(rec)])
    with pytest.raises(SystemExit, match="train_iact: error: .*no such file"):
        ta.main(["--task", "clean", "--runs", str(tmp_path), "--no-progress", "--noise-data", str(tmp_path / "x.h5")])
    assert not any(tmp_path.iterdir())
