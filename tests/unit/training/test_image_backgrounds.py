"""train_image --noise-data: U-nets of any frame size, recorded backgrounds under simulated signal, a
served model of the recording's shape, provenance, refusals and exports that never overwrite on failure."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
zmq = pytest.importorskip("zmq")

from training import train_image as ti  # noqa: E402
from training.core.backgrounds import load_backgrounds  # noqa: E402
from training.core.metrics import roc_auc  # noqa: E402
from training.core.runtime import OrtRunner  # noqa: E402
from training.core.staging import staged_export  # noqa: E402
from training.image_models import DenoiseConfig, DenoisingAE, SegmentUNet, UNetConfig, pad_to_multiple  # noqa: E402
from trigger.calibration import DenoiseCalibration, SegmentCalibration, calibration_path_for, load_for_model  # noqa: E402
from trigger.protocol import encode_input  # noqa: E402
from trigger.replay import open_socket  # noqa: E402
from trigger.runfile import write_run  # noqa: E402
from trigger.testing import DecisionCollector, free_port, handshake, start_serve, wait_until  # noqa: E402

pytestmark = pytest.mark.train

FRAME = (48, 80)  # not square, not 64 x 64
PEDESTAL, SIGMA = 200.0, 6.0
SIGNAL_SCALE = 0.1  # simulated counts -> ADU: diffuse sky ~5 ADU a pixel under 6 ADU of noise


def camera_noise(n: int, shape=FRAME, seed: int = 0) -> np.ndarray:
    """int16 frames of a camera unlike the sky simulator: per-pixel pedestals around 200 ADU (spread 15),
    Gaussian read noise of 6 ADU, rounded to counts."""
    ped = PEDESTAL + np.random.default_rng(99).normal(0, 15, shape)
    return np.round(ped + np.random.default_rng(seed).normal(0, SIGMA, (n, *shape))).astype(np.int16)


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> Path:
    return write_run(tmp_path_factory.mktemp("bg") / "camera_noise.h5", camera_noise(400), units="adu")


@pytest.fixture(scope="module")
def trained(recording, tmp_path_factory) -> dict:
    """segment (a tiny profile that learns) and denoise (quick), each exported: task -> (onnx, metrics)."""
    out = {}
    profiles = {"segment": dataclasses.replace(ti.PROFILES["segment"]["quick"], epochs=6, lr=1e-2),
                "denoise": ti.PROFILES["denoise"]["quick"]}
    for task, profile in profiles.items():
        d = tmp_path_factory.mktemp(task)
        onnx_path = d / f"{task}_camera.onnx"
        metrics = ti.run(task, profile, d / "run", export=onnx_path, threads=1, progress=False, plots=False,
                         command=f"pytest {task} --noise-data", noise_data=[recording], signal_scale=SIGNAL_SCALE)
        out[task] = onnx_path, metrics
    return out


# ------------------------------------------------------------------------------- models, no training

@pytest.mark.parametrize("shape", [(45, 77), (48, 80), (64, 64), (9, 130)])
def test_unets_take_any_frame_size_and_give_it_back(shape):
    torch.manual_seed(0)
    x = torch.rand(2, *shape) * 50
    seg = SegmentUNet(UNetConfig(base_channels=4, depth=3)).eval()
    den = DenoisingAE(DenoiseConfig(channels=(4, 4, 4))).eval()
    with torch.no_grad():
        assert seg(x).shape == (2, *shape) and torch.isfinite(seg(x)).all()
        assert den(x).shape == (2, *shape) and torch.isfinite(den(x)).all()


def test_padding_is_a_no_op_on_multiples_and_zero_fills_the_rest():
    x = torch.rand(1, 1, 64, 64)
    assert pad_to_multiple(x, 8) is x  # the shipped 64 x 64 models run exactly their old graph
    y = pad_to_multiple(torch.ones(1, 1, 45, 77), 8)
    assert y.shape == (1, 1, 48, 80) and y[..., :45, :77].eq(1).all() and y[..., 45:, :].eq(0).all()


def test_pedestal_model_sees_the_frame_above_its_pedestal():
    torch.manual_seed(0)
    model = SegmentUNet(UNetConfig(base_channels=4, depth=2, height=12, width=20, pedestal=True)).eval()
    ped = torch.rand(12, 20) * 1000
    model.pedestal.copy_(ped)
    x = torch.rand(3, 12, 20) * 10
    with torch.no_grad():  # invariant to scaling the signal above the pedestal
        torch.testing.assert_close(model(x + ped), model(3 * x + ped), rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- trained on the recording

def test_segment_trains_on_the_recording_frame_and_beats_the_raw_pixel_value(trained, recording):
    onnx_path, m = trained["segment"]
    assert m["model_config"]["height"] == 48 and m["model_config"]["width"] == 80
    assert m["onnx"]["max_scaled_diff"] < 1e-4 and m["onnx"]["path"] == str(onnx_path)
    runner = OrtRunner(onnx_path)
    assert runner.session.get_inputs()[0].shape[1:] == [48, 80]  # the frame size is fixed in the graph
    cal = load_for_model(onnx_path, kind=SegmentCalibration)
    assert cal.event_shape == FRAME
    # Held-out recorded background + simulated signal: the U-net beats the pedestal-subtracted pixel value.
    bg = load_backgrounds([recording], kind="image", seed=ti.SEEDS["background_split"])
    test = ti.with_background(ti.scaled(ti.simulate_frames(32, ti.SEEDS["test"], FRAME, progress=False),
                                        SIGNAL_SCALE), bg, "test")
    auc = roc_auc(runner(test.counts, "prob"), test.mask_all)
    baseline = roc_auc(test.counts - bg.pedestal_frame(), test.mask_all)
    assert auc == pytest.approx(m["test"]["auc_all"], abs=1e-4)
    assert auc > 0.8 and auc > baseline, (auc, baseline)
    # The working point holds on the held-out calibration frames it was computed from.
    assert cal.validation["working_points"]["fpr_0.01"]["fpr_calibration"] <= 0.01


def test_denoise_on_recorded_background_beats_the_noisy_input(trained):
    onnx_path, m = trained["denoise"]
    mse, noisy = m["test_mse"]["recorded"], m["test_mse_noisy_input"]["recorded"]
    assert noisy == pytest.approx(SIGMA ** 2, rel=0.15)  # the recorded noise, in ADU^2
    assert mse < 0.8 * noisy, (mse, noisy)
    cal = load_for_model(onnx_path, kind=DenoiseCalibration)
    assert cal.event_shape == FRAME and cal.noise_model == "recorded"
    assert cal.validation_mse["recorded"] == pytest.approx(mse, rel=1e-3)  # measured with the exported file


def test_cards_record_the_data_files_splits_command_and_seeds(trained, recording):
    sha = hashlib.sha256(recording.read_bytes()).hexdigest()
    for task, (onnx_path, _) in trained.items():
        training = json.loads(calibration_path_for(onnx_path).read_text())["training"]
        (f,) = training["data"]
        assert f["name"] == recording.name and f["sha256"] == sha and f["bytes"] == recording.stat().st_size
        assert set(f["events"]) == {"train", "validation", "calibration", "test"}
        assert sum(f["events"].values()) <= 400 and f["events"]["train"] == 240  # 60% of the 400 frames
        assert training["command"] == f"pytest {task} --noise-data" and training["seeds"] == ti.SEEDS
        assert training["noise_data"]["split_seed"] == ti.SEEDS["background_split"]
        assert training["noise_data"]["dtype"] == "int16" and training["signal_scale"] == SIGNAL_SCALE


def test_daemon_serves_frames_of_the_recording_shape(trained):
    # int16 ADC frames as the camera sends them: simulated sky (in ADU) on recorded-like camera noise.
    sky = ti.scaled(ti.simulate_frames(12, 5, FRAME, progress=False), SIGNAL_SCALE).counts
    frames = np.round(camera_noise(12, seed=7) + sky).astype(np.int16)
    ctx = zmq.Context()
    try:
        for pipeline in ("segment", "denoise"):
            onnx_path, _ = trained[pipeline]
            pub = open_socket(ctx, "tcp://127.0.0.1:*", "push")
            out_ep = f"tcp://127.0.0.1:{free_port()}"
            try:
                with start_serve("--pipeline", pipeline, "--model", str(onnx_path), "--input-pattern", "pull",
                                 "--input", pub.getsockopt(zmq.LAST_ENDPOINT).decode(), "--output", out_ep) as daemon:
                    collector = DecisionCollector(ctx, out_ep, keep_arrays=True)
                    collector.start()
                    try:
                        handshake(pub, collector, FRAME, "image")
                        pub.send_multipart(encode_input("image", "cam1", 0, time.time_ns(), frames))
                        assert wait_until(lambda c=collector: c.events() >= 12, timeout=30)
                        arrays = collector.out.arrays[("cam1", 0)]
                    finally:
                        collector.stop()
                    assert daemon.stop() == 0
            finally:
                pub.close(linger=0)
            x = frames.astype(np.float32)  # the samples converted to float32 as they are
            if pipeline == "segment":
                cut = load_for_model(onnx_path, kind=SegmentCalibration).threshold()
                expect = OrtRunner(onnx_path)(x, "prob") > cut
                assert arrays["mask"].shape == (12, *FRAME) and arrays["mask"].dtype == np.uint8
                assert np.mean(arrays["mask"] != expect) < 1e-3  # equal up to float ties at the cut
                assert 0 < arrays["mask"].mean() < 0.5
            else:
                assert arrays["data"].shape == (12, *FRAME)
                np.testing.assert_allclose(arrays["data"], OrtRunner(onnx_path)(x, "denoised"), rtol=1e-5, atol=1e-3)
    finally:
        ctx.term()


def test_regressor_takes_the_recording_frame_and_its_card_names_the_file(recording, tmp_path):
    onnx_path = tmp_path / "sky_params.onnx"
    profile = dataclasses.replace(ti.PROFILES["regress"]["quick"], n_train=64, n_val=32, n_test=32, epochs=2)
    m = ti.run("regress", profile, tmp_path / "run", export=onnx_path, threads=1,
               progress=False, plots=False, command="pytest regress", noise_data=[recording], signal_scale=1.0)
    assert m["model_config"]["height"] == 48 and m["model_config"]["width"] == 80 and m["model_config"]["pedestal"]
    assert m["onnx"]["max_scaled_diff"] < 1e-4
    assert all(np.isfinite(v) for v in m["test_mean_relative_error"].values())
    card = json.loads((tmp_path / "sky_params.card.json").read_text())
    assert card["training"]["data"][0]["sha256"] == hashlib.sha256(recording.read_bytes()).hexdigest()
    # A recorded-background checkpoint cannot be re-exported against simulated 64 x 64 calibration frames.
    from training import export_image as ex

    with pytest.raises(SystemExit, match="trained on recorded backgrounds"):
        ex.main([str(tmp_path / "run" / "model.pt"), "-o", str(tmp_path / "again.onnx")])
    assert not (tmp_path / "again.onnx").exists()


# ------------------------------------------------------------------------------------------ refusals

def test_unusable_noise_data_is_refused_in_one_line_and_leaves_the_model(tmp_path, recording):
    old = tmp_path / "seg.onnx"
    old.write_bytes(b"the existing model")
    trace = write_run(tmp_path / "traces.h5", np.zeros((50, 300), np.int16))
    other = write_run(tmp_path / "other_size.h5", camera_noise(50, (40, 40)))
    not_a_run = tmp_path / "plain.h5"
    not_a_run.write_bytes(b"\x89HDF\r\n\x1a\n not really")
    cases = {"missing": [tmp_path / "nope.h5"], "waveform": [trace], "mixed shapes": [recording, other],
             "not a recording": [not_a_run]}
    for what, files in cases.items():
        argv = ["--task", "segment", "--profile", "quick", "--runs", str(tmp_path / "runs"), "--export", str(old),
                "--no-progress", "--threads", "1"]
        for f in files:
            argv += ["--noise-data", str(f)]
        with pytest.raises(SystemExit) as exc:
            ti.main(argv)
        msg = str(exc.value.code)
        assert msg.startswith("train_image: error: ") and "\n" not in msg, (what, msg)
        assert old.read_bytes() == b"the existing model", what
    assert not list(tmp_path.glob("seg.partial*")) and not (tmp_path / "seg.calib.json").exists()


def test_a_failed_export_leaves_the_old_model_and_calibration(tmp_path):
    model, cal = tmp_path / "m.onnx", tmp_path / "m.calib.json"
    model.write_text("old model")
    cal.write_text("old calibration")
    with pytest.raises(RuntimeError, match="calibration failed"), staged_export(model) as part:
        part.write_text("new model")
        calibration_path_for(part).write_text("half a calibration")
        raise RuntimeError("calibration failed")
    assert model.read_text() == "old model" and cal.read_text() == "old calibration"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.calib.json", "m.onnx"]
    with staged_export(model) as part:
        part.write_text("new model")
        calibration_path_for(part).write_text("new calibration")
    assert model.read_text() == "new model" and cal.read_text() == "new calibration"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.calib.json", "m.onnx"]
