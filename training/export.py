"""Export the VCAE encoder's mean head to ONNX and calibrate it on noise with ONNX Runtime.

The ONNX graph takes raw waveforms, ``waveform`` float32 [batch, n_samples], and returns
``z_mean`` float32 [batch, k]; the input standardisation and the channel axis live inside the
graph, so the daemon feeds digitizer samples as they come. The calibration encodes independent
noise-only waveforms with the *exported file* (not torch), so its thresholds describe exactly
what the daemon will compute, and names that file by sha256.

Beside the ONNX file goes the same head as a ``torch.export`` archive (``pulse.onnx`` ->
``pulse.pt2``) for the daemon's PyTorch backend (``trigger.backends.pytorch``). The archive records
the sha256 of the ONNX file in its metadata and is kept only if it agrees with that file under ONNX
Runtime (max |diff| <= 1e-4 on simulated waveforms), so the ONNX file's calibration holds for it.

    python -m training.export runs/<name>/model.pt -o trigger/models/pulse.onnx
    python -m training.export runs/<name>/model.pt -o trigger/models/pulse.onnx --pt2-only
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from training.core.onnx_export import OPSET, quiet_exporter, write_onnx
from training.core.runtime import OrtRunner
from training.vcae import VCAE, Encoder
from trigger.backends.pytorch import PT2_FORMAT, PT2_META, pt2_path_for
from trigger.calibration import PulseCalibration, calibration_path_for, sha256_file

logger = logging.getLogger("training")

INPUT_NAME = "waveform"
OUTPUT_NAME = "z_mean"
CALIBRATION_SEED = 103  # training.pulse_simulated.SEEDS["calibration"]; never used for training data


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


def export_onnx(model: VCAE, path: str | Path, *, check_batch: int = 64, pt2: bool = True,
                check: np.ndarray | None = None) -> dict[str, Any]:
    """Write the encoder mean head to ``path`` (one self-contained file, input [batch, L]) and check it.

    Returns ``{"path", "sha256", "opset", "bytes", "max_abs_diff"}`` (and ``"pt2"``: the result of
    :func:`export_pt2`, written beside it unless ``pt2`` is false); raises if ONNX Runtime and
    torch differ by more than 1e-4 on ``check`` (raw traces [n, L]; default: ``check_batch``
    simulated waveforms of the shipped simulator).
    """
    head = EncoderMean(model.encoder).eval()
    example = torch.zeros(2, model.config.input_samples)
    path = write_onnx(head, {"waveform": example}, path, [OUTPUT_NAME], [INPUT_NAME])
    diff = compare_with_torch(path, head, check_batch, x=check)
    if not diff <= 1e-4:
        raise RuntimeError(f"ONNX Runtime and torch disagree on {path}: max |diff| = {diff:.3g}")
    info = {"path": str(path), "sha256": sha256_file(path), "opset": OPSET, "bytes": path.stat().st_size,
            "max_abs_diff": diff}
    logger.info("exported %s (%d bytes, opset %d); ORT vs torch max |diff| = %.3g", path, info["bytes"], OPSET, diff)
    if pt2:
        info["pt2"] = export_pt2(model, path, check_events=check_batch)
    return info


def export_pt2(model: VCAE, onnx_path: str | Path, *, check_events: int = 1000, atol: float = 1e-4,
               seed: int = 11) -> dict[str, Any]:
    """Write the encoder mean head as a ``torch.export`` archive beside ``onnx_path`` (same stem, ``.pt2``).

    The archive's metadata (extra file ``trigger.json``) names the ONNX file by sha256, with the input
    and output names and the event size. Before the archive replaces any earlier one it is loaded back
    and compared with ONNX Runtime on the ONNX file for ``check_events`` simulated waveforms (half with
    a pulse); a max |diff| above ``atol`` raises and leaves no archive behind. Returns ``{"path",
    "sha256", "onnx_sha256", "bytes", "max_abs_diff", "events"}``.
    """
    onnx_path = Path(onnx_path)
    path = pt2_path_for(onnx_path)
    head = EncoderMean(model.encoder).eval()
    n_samples = model.config.input_samples
    meta = {"format": PT2_FORMAT, "onnx_name": onnx_path.name, "onnx_sha256": sha256_file(onnx_path),
            "input_name": INPUT_NAME, "output_name": OUTPUT_NAME, "n_samples": n_samples,
            "latent_dim": model.config.latent_dim, "torch": torch.__version__}
    batch = torch.export.Dim("batch")
    with torch.no_grad(), quiet_exporter():
        program = torch.export.export(head, (torch.zeros(2, n_samples),), dynamic_shapes={"waveform": {0: batch}})
    # No example inputs in the archive: torch would store them with torch.save and read them back
    # with its unpickler (falling back to weights_only=False), and the daemon loads no pickles.
    program.example_inputs = None
    # Written under its final name in a scratch folder beside it (torch names the archive's root
    # after the file), checked, then moved into place: a failed check leaves the old archive alone.
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.stem}.") as scratch:
        tmp = Path(scratch) / path.name
        torch.export.save(program, str(tmp), extra_files={PT2_META: json.dumps(meta, sort_keys=True)})
        _deflate_json_members(tmp)
        diff = compare_pt2_with_onnx(tmp, onnx_path, check_events, seed)
        if not diff <= atol:
            raise RuntimeError(f"the torch.export archive of {onnx_path.name} and ONNX Runtime disagree: "
                               f"max |diff| = {diff:.3g} > {atol:g}; not keeping {path}")
        tmp.replace(path)
    info = {"path": str(path), "sha256": sha256_file(path), "onnx_sha256": meta["onnx_sha256"],
            "bytes": path.stat().st_size, "max_abs_diff": diff, "events": check_events}
    logger.info("exported %s (%d bytes) for %s; torch.export vs ONNX Runtime max |diff| = %.3g on %d waveforms",
                path, info["bytes"], onnx_path.name, diff, check_events)
    return info


def _deflate_json_members(path: Path) -> None:
    """Rewrite the archive with its JSON members compressed (the weights stay stored as they are).

    Smaller, and the archive then holds no literal "use_pickle" flags: the daemon's package
    (trigger/, where the archive ships) is checked to contain that word nowhere.
    """
    tmp = path.with_name(path.name + ".zip")
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp, "w") as dst:
        for info in src.infolist():
            out = zipfile.ZipInfo(info.filename, date_time=info.date_time)
            out.compress_type = zipfile.ZIP_DEFLATED if info.filename.endswith(".json") else zipfile.ZIP_STORED
            dst.writestr(out, src.read(info))
    tmp.replace(path)


def compare_pt2_with_onnx(pt2: str | Path, onnx_path: str | Path, n: int = 1000, seed: int = 11) -> float:
    """Max |torch.export archive - ONNX Runtime| of z_mean on ``n`` simulated waveforms (half with a pulse)."""
    from simulators.waveform import simulate

    x, _ = simulate(n, seed=seed, signal_fraction=0.5)
    module = torch.export.load(str(pt2)).module()
    with torch.no_grad():
        got = np.concatenate([module(torch.from_numpy(x[i:i + 256])).numpy() for i in range(0, n, 256)])
    ref = ort_encoder(onnx_path)(x)
    return float(np.max(np.abs(got - ref)))


def compare_with_torch(path: str | Path, head: nn.Module, n: int = 64, seed: int = 7,
                       x: np.ndarray | None = None) -> float:
    """Max |ORT - torch| of z_mean on raw traces ``x``, by default ``n`` simulated waveforms (half with a pulse)."""
    from simulators.waveform import simulate

    if x is None:
        x, _ = simulate(n, seed=seed, signal_fraction=0.5)
    x = np.ascontiguousarray(x, dtype=np.float32)
    with torch.no_grad():
        ref = head(torch.from_numpy(x)).numpy()
    got = ort_encoder(path)(x)
    return float(np.max(np.abs(got - ref)))


def ort_encoder(path: str | Path, threads: int = 2) -> Callable[[np.ndarray], np.ndarray]:
    """A function raw waveforms [n, n_samples] -> z_mean [n, k] (an :class:`OrtRunner`, 4096 a run)."""
    return OrtRunner(path, threads, batch_size=4096)


def calibrate(path: str | Path, *, n_noise: int = 100_000, seed: int = CALIBRATION_SEED,
              provenance: Mapping[str, Any] | None = None, n_samples: int | None = None) -> PulseCalibration:
    """Encode ``n_noise`` noise-only waveforms (simulator seed ``seed``) with the ONNX file and save
    ``<stem>.calib.json`` beside it; returns the calibration."""
    from simulators.waveform import WaveformConfig
    from training.pulse_simulated import encode_stream

    n_samples = n_samples or WaveformConfig().n_samples
    levels: list[np.ndarray] = []
    z, _ = encode_stream(ort_encoder(path), n_noise, seed, 0.0, desc="calibration noise (ONNX Runtime)", levels=levels)
    prov = {"noise_seed": seed, "noise_events": n_noise, "signal_fraction": 0.0, "encoder": "onnxruntime",
            **dict(provenance or {})}
    cal = PulseCalibration.from_noise(z, model_sha256=sha256_file(path), n_samples=n_samples, provenance=prov,
                                      levels=np.concatenate(levels))
    out = cal.save(calibration_path_for(path))
    logger.info("calibration %s: centre %s, thresholds %s", out, np.round(cal.centre, 4).tolist(),
                {k: round(v, 4) for k, v in cal.working_points.items()})
    return cal


def main(argv: list[str] | None = None) -> int:
    from training.pulse_simulated import load_checkpoint

    p = argparse.ArgumentParser(prog="python -m training.export", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", type=Path, help="a run folder's model.pt")
    p.add_argument("-o", "--output", type=Path, required=True, help=".onnx file to write")
    p.add_argument("--n-noise", type=int, default=100_000, help="noise-only waveforms for the calibration")
    p.add_argument("--seed", type=int, default=CALIBRATION_SEED, help="simulator seed of the calibration noise")
    p.add_argument("--pt2-only", action="store_true",
                   help="the .onnx exists (exported from this checkpoint): write only the .pt2 beside it, checked "
                        "against it; the .onnx and its calibration stay as they are")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)
    torch.set_num_threads(2)
    model = load_checkpoint(args.checkpoint)
    from simulators.waveform import WaveformConfig

    simulated = WaveformConfig().n_samples
    if model.config.input_samples != simulated:
        # It checks and calibrates on the simulator's waveforms, which such a model cannot take.
        p.error(f"{args.checkpoint} takes {model.config.input_samples}-sample traces (a model of a recording), "
                f"this command checks and calibrates on the simulator's {simulated}-sample noise; train_pulse "
                "--data ... --export OUT.onnx exports and calibrates such a model, and trigger calibrate --model "
                "OUT.onnx --data noise.h5 recalibrates it")
    if args.pt2_only:
        if not args.output.is_file():
            p.error(f"--pt2-only: {args.output} does not exist")
        export_pt2(model, args.output)
        return 0
    info = export_onnx(model, args.output)
    calibrate(args.output, n_noise=args.n_noise, seed=args.seed,
              provenance={"command": "python -m training.export " + shlex.join(sys.argv[1:]),
                          "checkpoint": str(args.checkpoint), "ort_vs_torch_max_abs_diff": info["max_abs_diff"]})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
