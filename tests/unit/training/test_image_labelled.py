"""train_image --data: segment and denoise trained (and fine-tuned with --init) on labelled recordings
(``truth/mask``, ``truth/clean`` of the frame's shape), held-out metrics against the raw pixel value and
the noisy input, cards naming the files, a served model of the recording's shape, and one-line refusals."""

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

from tests.unit.training.test_image_backgrounds import PEDESTAL, SIGMA, SIGNAL_SCALE  # noqa: E402
from training import train_image as ti  # noqa: E402
from training.core.backgrounds import load_labelled  # noqa: E402
from training.core.metrics import roc_auc  # noqa: E402
from training.core.runtime import OrtRunner  # noqa: E402
from trigger.calibration import DenoiseCalibration, SegmentCalibration, calibration_path_for, load_for_model  # noqa: E402
from trigger.protocol import encode_input  # noqa: E402
from trigger.replay import open_socket  # noqa: E402
from trigger.runfile import write_run  # noqa: E402
from trigger.testing import DecisionCollector, free_port, handshake, start_serve, wait_until  # noqa: E402

pytestmark = pytest.mark.train

FRAME = (40, 56)  # not square, not 64 x 64
N_EVENTS = (250, 150)  # two files, read as one run


def labelled_frames(n: int, seed: int, shape=FRAME) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """uint16 camera frames of simulated sky (in ADU) on per-pixel pedestals with read noise, and their
    labels: ``mask`` (the simulator's source mask, 0/1) and ``clean`` (pedestal + sky, float32)."""
    sky = ti.scaled(ti.simulate_frames(n, seed, shape, progress=False), SIGNAL_SCALE)
    ped = PEDESTAL + np.random.default_rng(99).normal(0, 15, shape)
    clean = (ped + sky.counts).astype(np.float32)
    data = np.round(clean + np.random.default_rng(seed + 1).normal(0, SIGMA, clean.shape)).astype(np.uint16)
    return data, {"mask": sky.mask_all.astype(np.uint8), "clean": clean}


@pytest.fixture(scope="module")
def recordings(tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("labelled")
    out = []
    for i, n in enumerate(N_EVENTS):
        data, truth = labelled_frames(n, 500 + 10 * i)
        out.append(write_run(d / f"sky_labelled_{i}.h5", data, truth, units="adu", events_per_message=100))
    return out


SEGMENT = dataclasses.replace(ti.PROFILES["segment"]["quick"], epochs=6, lr=1e-2)


@pytest.fixture(scope="module")
def trained(recordings, tmp_path_factory) -> dict:
    """segment and denoise trained on the labelled recordings, each exported: task -> (onnx, metrics, run dir)."""
    out = {}
    for task, profile in {"segment": SEGMENT, "denoise": ti.PROFILES["denoise"]["quick"]}.items():
        d = tmp_path_factory.mktemp(task)
        onnx_path = d / f"{task}_labelled.onnx"
        metrics = ti.run(task, profile, d / "run", export=onnx_path, threads=1, progress=False, plots=False,
                         command=f"pytest {task} --data", data=recordings)
        out[task] = onnx_path, metrics, d / "run"
    return out


def held_out(recordings, split: str = "test", labels=("mask", "clean")):
    bg = load_labelled(recordings, labels=labels, task="test", seed=ti.SEEDS["background_split"])
    return bg.events[split], bg.labels[split]


def test_segment_on_labelled_frames_beats_the_raw_pixel_value(trained, recordings):
    onnx_path, m, _ = trained["segment"]
    assert m["model_config"]["height"] == 40 and m["model_config"]["width"] == 56 and m["model_config"]["pedestal"]
    assert m["onnx"]["max_scaled_diff"] < 1e-4
    frames, labels = held_out(recordings)
    assert len(frames) == 40  # the test split: 10% of the 400 recorded frames
    runner = OrtRunner(onnx_path)
    auc = roc_auc(runner(frames, "prob"), labels["mask"].astype(bool))
    assert auc == pytest.approx(m["test"]["auc_all"], abs=1e-4)  # the reported metric is on the test rows
    assert auc > 0.8 and auc > m["test_auc_pixel_value"], (auc, m["test_auc_pixel_value"])
    cal = load_for_model(onnx_path, kind=SegmentCalibration)
    assert cal.event_shape == FRAME
    assert cal.validation["working_points"]["fpr_0.01"]["fpr_calibration"] <= 0.01


def test_denoise_on_labelled_frames_beats_the_noisy_input(trained, recordings):
    onnx_path, m, _ = trained["denoise"]
    mse, noisy = m["test_mse"]["recorded"], m["test_mse_noisy_input"]["recorded"]
    assert noisy == pytest.approx(SIGMA ** 2 + 1 / 12, rel=0.1)  # the read noise plus rounding, in ADU^2
    assert mse < 0.8 * noisy, (mse, noisy)
    frames, labels = held_out(recordings)
    got = float(np.mean((OrtRunner(onnx_path)(frames, "denoised") - labels["clean"]) ** 2))
    assert got == pytest.approx(mse, rel=1e-3)
    cal = load_for_model(onnx_path, kind=DenoiseCalibration)
    assert cal.event_shape == FRAME and cal.noise_model == "recorded"
    assert cal.validation_mse["recorded"] == pytest.approx(mse, rel=1e-3)
    assert "truth/clean" in json.loads(calibration_path_for(onnx_path).read_text())["training"]["mse_definition"]


def test_cards_record_the_files_and_events_per_split(trained, recordings):
    for task, (onnx_path, _, _) in trained.items():
        training = json.loads(calibration_path_for(onnx_path).read_text())["training"]
        assert [f["name"] for f in training["data"]] == [p.name for p in recordings]
        for f, p in zip(training["data"], recordings, strict=True):
            assert f["sha256"] == hashlib.sha256(p.read_bytes()).hexdigest()
        per_split = {s: sum(f["events"].get(s, 0) for f in training["data"]) for s in ("train", "validation", "test")}
        assert per_split == {"train": 240, "validation": 40, "test": 40}, task
        assert sum(sum(f["events"].values()) for f in training["data"]) == (400 if task == "segment" else 320)
        assert training["labelled_data"]["split_seed"] == ti.SEEDS["background_split"]
        assert training["labelled_data"]["dtype"] == "uint16" and training["command"] == f"pytest {task} --data"
        assert training["labels"] == {"segment": {"mask": "truth/mask"}, "denoise": {"clean": "truth/clean"}}[task]


def test_fine_tuning_starts_from_the_earlier_model(trained, recordings, tmp_path):
    _, m0, run0 = trained["segment"]
    _, old, _ = ti.load_checkpoint(run0 / "model.pt")
    onnx_path = tmp_path / "seg_tuned.onnx"
    ti.main(["--task", "segment", "--profile", "quick", "--epochs", "1", "--data", str(recordings[1]),
             "--init", str(run0), "--runs", str(tmp_path), "--name", "tuned", "--export", str(onnx_path),
             "--no-progress", "--threads", "1", "--log-level", "WARNING"])
    m = json.loads((tmp_path / "tuned" / "metrics.json").read_text())
    _, tuned, extra = ti.load_checkpoint(tmp_path / "tuned" / "model.pt")
    assert extra["init"] == str(run0) and m["labelled_data"]["init"] == str(run0)
    assert torch.equal(tuned.pedestal, old.pedestal)  # the earlier model's pedestal, kept
    assert tuned.config == old.config
    # One epoch on 90 frames from a fresh model would not get here: the weights came from the earlier run.
    assert m["test"]["auc_all"] > m["test_auc_pixel_value"] and m["test"]["auc_all"] > 0.8, m["test"]
    assert onnx_path.exists() and load_for_model(onnx_path, kind=SegmentCalibration).event_shape == FRAME
    training = json.loads(calibration_path_for(onnx_path).read_text())["training"]
    assert training["init"] == str(run0) and [f["name"] for f in training["data"]] == [recordings[1].name]


def test_daemon_serves_the_labelled_model_on_recorded_frames(trained, recordings):
    onnx_path, _, _ = trained["segment"]
    frames, _ = labelled_frames(12, 7)  # uint16 frames as the camera sends them
    ctx = zmq.Context()
    pub = open_socket(ctx, "tcp://127.0.0.1:*", "push")
    out_ep = f"tcp://127.0.0.1:{free_port()}"
    try:
        with start_serve("--pipeline", "segment", "--model", str(onnx_path), "--input-pattern", "pull",
                         "--input", pub.getsockopt(zmq.LAST_ENDPOINT).decode(), "--output", out_ep) as daemon:
            collector = DecisionCollector(ctx, out_ep, keep_arrays=True)
            collector.start()
            try:
                handshake(pub, collector, FRAME, "image")
                pub.send_multipart(encode_input("image", "cam1", 0, time.time_ns(), frames))
                assert wait_until(lambda: collector.events() >= 12, timeout=30)
                arrays = collector.out.arrays[("cam1", 0)]
            finally:
                collector.stop()
            assert daemon.stop() == 0
    finally:
        pub.close(linger=0)
        ctx.term()
    cut = load_for_model(onnx_path, kind=SegmentCalibration).threshold()
    expect = OrtRunner(onnx_path)(frames.astype(np.float32), "prob") > cut
    assert arrays["mask"].shape == (12, *FRAME) and arrays["mask"].dtype == np.uint8
    assert np.mean(arrays["mask"] != expect) < 1e-3
    assert 0 < arrays["mask"].mean() < 0.5


# ------------------------------------------------------------------------------------------ refusals

def test_unusable_data_is_refused_in_one_line_and_leaves_the_model(tmp_path, recordings, trained):
    old = tmp_path / "model.onnx"
    old.write_bytes(b"the existing model")
    data, truth = labelled_frames(30, 3)
    no_mask = write_run(tmp_path / "no_mask.h5", data, {"clean": truth["clean"]})
    small_mask = write_run(tmp_path / "small_mask.h5", data, {"mask": truth["mask"][:, :20], "clean": truth["clean"]})
    not_binary = write_run(tmp_path / "not_binary.h5", data, {"mask": truth["mask"] * 3, "clean": truth["clean"]})
    d2, t2 = labelled_frames(30, 4, (40, 40))
    other_frame = write_run(tmp_path / "other_frame.h5", d2, t2)
    bool_mask = write_run(tmp_path / "bool_mask.h5", data, {**truth, "mask": truth["mask"].astype(bool)})
    seg_run, den_run = trained["segment"][2], trained["denoise"][2]
    cases = {
        "missing mask": ("segment", [no_mask], []),
        "mask of another shape": ("segment", [small_mask], []),
        "mask not 0/1": ("segment", [not_binary], []),
        "missing clean": ("denoise", [write_run(tmp_path / "mask_only.h5", data, {"mask": truth["mask"]})], []),
        "mixed frame shapes": ("segment", [recordings[0], other_frame], []),
        "mixed label dtypes": ("segment", [recordings[0], bool_mask], []),
        "regress": ("regress", [recordings[0]], []),
        "with --noise-data": ("segment", [recordings[0]], ["--noise-data", str(recordings[1])]),
        "--init of another task": ("segment", [recordings[0]], ["--init", str(den_run)]),
        "--init of another frame": ("segment", [other_frame], ["--init", str(seg_run)]),
        "--init not a checkpoint": ("segment", [recordings[0]], ["--init", str(recordings[1])]),
        "--init without --data": ("segment", [], ["--init", str(seg_run)]),
    }
    for what, (task, files, extra) in cases.items():
        argv = ["--task", task, "--profile", "quick", "--runs", str(tmp_path / "runs"), "--export", str(old),
                "--no-progress", "--threads", "1", *extra]
        for f in files:
            argv += ["--data", str(f)]
        with pytest.raises(SystemExit) as exc:
            ti.main(argv)
        msg = str(exc.value.code)
        assert msg.startswith("train_image: error: ") and "\n" not in msg, (what, msg)
        assert old.read_bytes() == b"the existing model", what
    assert not list(tmp_path.glob("model.partial*")) and not (tmp_path / "model.calib.json").exists()
    assert not (tmp_path / "runs").exists()  # refused before anything was written


def test_denoise_fine_tuning_keeps_what_the_earlier_model_learned(trained, recordings, tmp_path):
    _, _, run0 = trained["denoise"]
    one = dataclasses.replace(ti.PROFILES["denoise"]["quick"], epochs=1)
    m = ti.run("denoise", one, tmp_path / "tuned", threads=1, progress=False, plots=False, data=[recordings[1]],
               init=run0)
    # A fresh model after one epoch on 90 frames stays near the noisy input; the fine-tuned one does not.
    assert m["test_mse"]["recorded"] < 0.6 * m["test_mse_noisy_input"]["recorded"], m
