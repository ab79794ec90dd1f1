"""Export the VCAE encoder's mean head to ONNX and calibrate it on noise with ONNX Runtime.

The ONNX graph takes raw waveforms, ``waveform`` float32 [batch, n_samples], and returns
``z_mean`` float32 [batch, k]; the input standardisation and the channel axis live inside the
graph, so the daemon feeds digitizer samples as they come. The calibration encodes independent
noise-only waveforms with the *exported file* (not torch), so its thresholds describe exactly
what the daemon will compute, and names that file by sha256.

    python -m training.export runs/<name>/model.pt -o trigger/models/pulse.onnx
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from training.vcae import VCAE, Encoder
from trigger.calibration import PulseCalibration, calibration_path_for, sha256_file

logger = logging.getLogger("training")

OPSET = 18  # the torch.export-based exporter's lowest; the daemon needs >= 17
INPUT_NAME = "waveform"
OUTPUT_NAME = "z_mean"
CALIBRATION_SEED = 103  # training.train_pulse.SEEDS["calibration"]; never used for training data


class EncoderMean(nn.Module):
    """Raw waveform [B, n_samples] -> z_mean [B, k], with plain (exportable) strided convolutions."""

    def __init__(self, encoder: Encoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        h = self.encoder.normalise(waveform).unsqueeze(1)
        for conv in self.encoder.convs:
            # nn.Conv1d.forward: the textbook convolution (ONNX Conv), not the training-time phase trick.
            h = F.avg_pool1d(F.relu(nn.Conv1d.forward(conv, h)), 2)
        return self.encoder.z_mean(h.flatten(1))


def export_onnx(model: VCAE, path: str | Path, *, check_batch: int = 64) -> dict[str, Any]:
    """Write the encoder mean head to ``path`` (one self-contained file) and check it against torch.

    Returns ``{"path", "sha256", "opset", "bytes", "max_abs_diff"}``; raises if ONNX Runtime and
    torch differ by more than 1e-4 on ``check_batch`` simulated waveforms.
    """
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    head = EncoderMean(model.encoder).eval()
    example = torch.zeros(2, model.config.n_samples)
    batch = torch.export.Dim("batch")
    with warnings.catch_warnings():
        # torch 2.13's exporter trips its own pytree deprecation (a FutureWarning inside torch, not
        # about our code); the project's tests turn warnings into errors.
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*", category=FutureWarning)
        torch.onnx.export(head, (example,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_shapes={"waveform": {0: batch}}, opset_version=OPSET, external_data=False,
                          verbose=False)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    diff = compare_with_torch(path, head, check_batch)
    if not diff <= 1e-4:
        raise RuntimeError(f"ONNX Runtime and torch disagree on {path}: max |diff| = {diff:.3g}")
    info = {"path": str(path), "sha256": sha256_file(path), "opset": OPSET, "bytes": path.stat().st_size,
            "max_abs_diff": diff}
    logger.info("exported %s (%d bytes, opset %d); ORT vs torch max |diff| = %.3g", path, info["bytes"], OPSET, diff)
    return info


def compare_with_torch(path: str | Path, head: nn.Module, n: int = 64, seed: int = 7) -> float:
    """Max |ORT - torch| of z_mean on ``n`` simulated waveforms (half with a pulse)."""
    from simulators.waveform import simulate

    x, _ = simulate(n, seed=seed, signal_fraction=0.5)
    with torch.no_grad():
        ref = head(torch.from_numpy(x)).numpy()
    got = ort_encoder(path)(x)
    return float(np.max(np.abs(got - ref)))


def ort_encoder(path: str | Path, threads: int = 2) -> Callable[[np.ndarray], np.ndarray]:
    """A function raw waveforms [n, n_samples] -> z_mean [n, k] backed by an ONNX Runtime session."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def encode(x: np.ndarray) -> np.ndarray:
        return session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(x, dtype=np.float32)})[0]

    return encode


def calibrate(path: str | Path, *, n_noise: int = 100_000, seed: int = CALIBRATION_SEED,
              provenance: Mapping[str, Any] | None = None, n_samples: int | None = None) -> PulseCalibration:
    """Encode ``n_noise`` noise-only waveforms (simulator seed ``seed``) with the ONNX file and save
    ``<stem>.calib.json`` beside it; returns the calibration."""
    from simulators.waveform import WaveformConfig
    from training.train_pulse import encode_stream

    n_samples = n_samples or WaveformConfig().n_samples
    z, _ = encode_stream(ort_encoder(path), n_noise, seed, 0.0, desc="calibration noise (ONNX Runtime)")
    prov = {"noise_seed": seed, "noise_events": n_noise, "signal_fraction": 0.0, "encoder": "onnxruntime",
            **dict(provenance or {})}
    cal = PulseCalibration.from_noise(z, model_sha256=sha256_file(path), n_samples=n_samples, provenance=prov)
    out = cal.save(calibration_path_for(path))
    logger.info("calibration %s: centre %s, thresholds %s", out, np.round(cal.centre, 4).tolist(),
                {k: round(v, 4) for k, v in cal.working_points.items()})
    return cal


def main(argv: list[str] | None = None) -> int:
    from training.train_pulse import load_checkpoint

    p = argparse.ArgumentParser(prog="python -m training.export", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", type=Path, help="a run folder's model.pt")
    p.add_argument("-o", "--output", type=Path, required=True, help=".onnx file to write")
    p.add_argument("--n-noise", type=int, default=100_000, help="noise-only waveforms for the calibration")
    p.add_argument("--seed", type=int, default=CALIBRATION_SEED, help="simulator seed of the calibration noise")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)
    torch.set_num_threads(2)
    model = load_checkpoint(args.checkpoint)
    info = export_onnx(model, args.output)
    calibrate(args.output, n_noise=args.n_noise, seed=args.seed,
              provenance={"command": "python -m training.export " + shlex.join(sys.argv[1:]),
                          "checkpoint": str(args.checkpoint), "ort_vs_torch_max_abs_diff": info["max_abs_diff"]})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
