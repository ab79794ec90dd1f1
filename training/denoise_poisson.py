"""Photon-counting frames denoised in the variance-stabilised domain, joined to the four-noise denoiser.

    # train (35 minutes on one thread; about 7,000 steps of 16 fresh frames)
    python -m training.denoise_poisson --minutes 35 --run-dir runs/denoise-poisson
    # export: this model on counting frames, the four-noise model (its own file) on every other frame
    python -m training.denoise_poisson --steps 0 --init-checkpoint runs/denoise-poisson/model.pt \
        --mix trigger/models/denoise_mix.onnx --export trigger/models/denoise_default.onnx

The four-noise denoiser (:mod:`training.denoise_exposure`) sees Poisson frames max-normalised, so at high
counts, where the noise is a few per cent of the frame, its estimate is limited by how well a network of
that size reproduces the frame itself: it beat Anscombe + BM3D at 3-30 counts only. Photon-counting frames
have a structure BM3D exploits and that network did not:

* **The count scale is in the frame.** A max-normalised frame of counts holds ``k / M`` values: its
  smallest step between distinct values is ``1 / M`` wherever two pixels differ by one count.
  :func:`count_scale` reads ``M`` from that step, in the graph, and :func:`is_counting_frame` checks the
  Poisson mean-variance relation against it (Immerkaer's noise estimate of ``sqrt(x)`` must give a count
  scale within a factor :data:`VARIANCE_BAND` of ``M``). Frames with Gaussian noise have no such step;
  masked and salt-and-pepper frames fail the variance check by a factor of 50 or more.
* **Anscombe's transform makes the noise one level at every exposure.** ``z = 2 sqrt(k + 3/8)`` has noise
  close to 1 whatever the counts; divided by ``max(z)``, the frame spans [0, 1] with noise ``1 / max(z)``.
* **A bias-free network generalises across noise levels** (Mohan et al. 2020, "Robust and interpretable
  blind image denoising via bias-free convolutional neural networks"): no additive constants anywhere, so
  ``f(a u) = a f(u)``. :class:`BiasFreeUNet` predicts the noise of the stabilised frame; the estimate goes
  back through the closed-form unbiased inverse of the transform (Makitalo and Foi 2011).
* **The loss is the benchmark's own**: the log of each frame's MSE over its input's MSE, in the input's
  units, over exposures log-uniform in 1-30,000 counts at the brightest pixel.

Training frames: half :mod:`simulators.sky` (its three variants of :mod:`training.denoise_exposure`),
half :mod:`simulators.random_fields`, fresh every step; never :mod:`simulators.diffuse_frames`, the
benchmark's generator.

The export (:func:`export_router`, torch reference :class:`CountingRouter`) is one ONNX file that takes
``image`` (raw or max-normalised frames) and returns this model's estimate on counting frames and the
four-noise model's on the others, running only the network(s) the batch needs (``If`` nodes), so the daemon
serves it as any denoiser. Measurements: benchmarks/README.md ("The sky denoiser against BM3D").
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

logger = logging.getLogger("training")

EXPOSURE_RANGE = (1.0, 30_000.0)
"""Expected counts at the brightest pixel of a training frame: log-uniform between these."""
MAX_COUNTS = 65_536.0
"""A step that gives a larger count scale is not a count step (a frame of continuous values)."""
VARIANCE_BAND = 4.0
"""A counting frame's variance-based count scale lies within this factor of its step-based one."""
SEEDS = {"init": 0, "frames": 777, "noise": 778}


def _conv(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1, bias=False)


class BiasFreeUNet(nn.Module):
    """A two-level U-net without additive constants (no biases, no batch norm): ``f(a u) = a f(u)``.

    Args:
        channels: width of the first level (the second has twice as many).
    """

    def __init__(self, channels: int = 16):
        super().__init__()
        c = channels
        self.channels = c
        self.e1 = nn.Sequential(_conv(1, c), nn.ReLU(), _conv(c, c), nn.ReLU())
        self.e2 = nn.Sequential(_conv(c, 2 * c), nn.ReLU(), _conv(2 * c, 2 * c), nn.ReLU())
        self.e3 = nn.Sequential(_conv(2 * c, 2 * c), nn.ReLU(), _conv(2 * c, 2 * c), nn.ReLU())
        self.d2 = nn.Sequential(_conv(4 * c, 2 * c), nn.ReLU(), _conv(2 * c, 2 * c), nn.ReLU())
        self.d1 = nn.Sequential(_conv(3 * c, c), nn.ReLU(), _conv(c, c), nn.ReLU(), _conv(c, 1))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """The noise estimate of ``u`` [B, 1, H, W] (H, W multiples of 4)."""
        a = self.e1(u)
        b = self.e2(F.avg_pool2d(a, 2))
        c = self.e3(F.avg_pool2d(b, 2))
        d = self.d2(torch.cat([F.interpolate(c, scale_factor=2.0, mode="nearest"), b], 1))
        return self.d1(torch.cat([F.interpolate(d, scale_factor=2.0, mode="nearest"), a], 1))


def inverse_anscombe(d: torch.Tensor) -> torch.Tensor:
    """Closed-form approximation of the exact unbiased inverse of ``2 sqrt(k + 3/8)`` (Makitalo and Foi)."""
    d = torch.clamp(d, min=1.0)
    r = math.sqrt(1.5)
    return torch.clamp(0.25 * d ** 2 + 0.25 * r / d - 1.375 / d ** 2 + 0.625 * r / d ** 3 - 0.125, min=0.0)


SORT_CHUNK = 2048
"""The frame's values are sorted in chunks of this many (TensorRT's TopK takes at most 3,840)."""
MIN_STEP = 0.25 / MAX_COUNTS
"""Smaller steps between sorted values are float32 rounding of equal counts, not a count."""
UNLIKELY_PIXELS = 3
"""A frame with more pixels than this that Poisson counts cannot explain (holes, spikes) is not taken for counts."""


def count_scale(x: torch.Tensor) -> torch.Tensor:
    """The count scale ``M`` [B] of max-normalised frames ``x`` [B, H, W] (H * W a multiple of
    :data:`SORT_CHUNK`): one over the smallest step between distinct values (0 included) within either
    chunk of the frame's pixels; exact where two pixels of one chunk differ by one count."""
    b = x.shape[0]
    v, _ = torch.sort(x.reshape(-1, SORT_CHUNK), dim=1)
    v = torch.cat([torch.zeros_like(v[:, :1]), v], dim=1)
    d = v[:, 1:] - v[:, :-1]
    d = torch.where(d > MIN_STEP, d, torch.full_like(d, 1.0))
    return torch.round(1.0 / torch.amin(d.reshape(b, -1), dim=1))


def variance_count_scale(x: torch.Tensor) -> torch.Tensor:
    """The count scale [B] from the noise of ``sqrt(x)`` (Immerkaer's estimate, ``1 / (2 sqrt(M))`` for counts)."""
    from training.denoise_exposure import IMMERKAER_KERNEL, sqrt_noise_level

    k = torch.tensor(IMMERKAER_KERNEL, dtype=x.dtype, device=x.device).view(1, 1, 3, 3)
    sigma = sqrt_noise_level(x.unsqueeze(1), k).flatten()
    return 1.0 / (4.0 * torch.clamp(sigma, min=1e-6) ** 2)


def unlikely_pixels(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """[B] the pixels of ``x`` (max-normalised, count scale ``m``) that Poisson counts do not explain: zeros
    whose 8 neighbours average more than 8 counts (P(0) < 4e-4 each), and pixels at the frame's maximum
    whose neighbours average less than a quarter of it (spikes), as dead and hot pixels leave them."""
    k = torch.ones(1, 1, 3, 3, dtype=x.dtype, device=x.device)
    k[0, 0, 1, 1] = 0.0
    around = F.conv2d(x.unsqueeze(1), k, padding=1)[:, 0] / F.conv2d(torch.ones_like(x).unsqueeze(1), k,
                                                                    padding=1)[:, 0]
    counts = around * m[:, None, None]
    holes = (x <= 0) & (counts > 8.0)
    top = torch.amax(x, dim=(1, 2), keepdim=True)
    spikes = (x >= top) & (around < 0.25 * top) & (m[:, None, None] >= 8.0)
    return torch.sum((holes | spikes).to(x.dtype), dim=(1, 2))


def is_counting_frame(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """[B] bool: ``x`` (max-normalised) looks like Poisson counts at scale ``m``: a count step, the
    variance-based count scale within :data:`VARIANCE_BAND` of it, and no more than
    :data:`UNLIKELY_PIXELS` holes or spikes (:func:`unlikely_pixels`)."""
    ratio = variance_count_scale(x) / m
    return ((m >= 1.0) & (m <= MAX_COUNTS) & (ratio > 1.0 / VARIANCE_BAND) & (ratio < VARIANCE_BAND)
            & (unlikely_pixels(x, m) <= UNLIKELY_PIXELS))


def denoise_counts(net: BiasFreeUNet, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Max-normalised counting frames ``x`` [B, H, W] at count scale ``m`` [B] -> estimates in ``x``'s units."""
    m = torch.clamp(m, min=1.0)[:, None, None]
    z = 2.0 * torch.sqrt(torch.clamp(x, min=0.0) * m + 0.375)
    s = torch.amax(z, dim=(1, 2), keepdim=True)
    u = (z / s).unsqueeze(1)
    return inverse_anscombe((u - net(u))[:, 0] * s) / m


class CountingRoute(nn.Module):
    """Raw or max-normalised frames ``image_in`` [B, H, W] -> ``(use, x, m, peak)``: whether each is a counting
    frame [B] (bool), the max-normalised frames, their count scale [B] and their peak [B, 1, 1]."""

    def forward(self, image_in: torch.Tensor) -> tuple[torch.Tensor, ...]:
        peak = torch.clamp(torch.amax(image_in, dim=(1, 2), keepdim=True), min=1e-12)
        x = image_in / peak
        m = count_scale(x)
        use = is_counting_frame(x, m) & (torch.amin(image_in, dim=(1, 2)) >= 0)
        return use, x, m, peak


class CountingEstimate(nn.Module):
    """``(x, m, peak)`` of :class:`CountingRoute` -> the counting network's estimate in the input's units."""

    def __init__(self, net: BiasFreeUNet):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, m: torch.Tensor, peak: torch.Tensor) -> torch.Tensor:
        return denoise_counts(self.net, x, m) * peak


class CountingRouter(nn.Module):
    """``(image, other)`` -> the counting-frame estimate where ``image`` is a counting frame, else ``other``.

    ``image_in``: raw or max-normalised frames [B, H, W]; ``other``: another denoiser's output for them, in the
    same units. The estimate is returned in the input's units. (The torch reference of the exported graph,
    which runs only the network a batch needs: :func:`export_router`.)

    Args:
        net: the trained :class:`BiasFreeUNet`.
    """

    def __init__(self, net: BiasFreeUNet):
        super().__init__()
        self.net = net
        self.route, self.estimate = CountingRoute(), CountingEstimate(net)

    def forward(self, image_in: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        use, x, m, peak = self.route(image_in)
        return torch.where(use[:, None, None], self.estimate(x, m, peak), other)


# ------------------------------------------------------------------------------------------ training

def training_batch(stream, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` fresh Poisson frames: (noisy, target) max-normalised [n, 64, 64] and the count scale [n]."""
    from training.denoise_exposure import poisson_pair
    from trigger.denoise_guard import estimate_gain

    expected, _ = stream.frames(n)
    noisy = np.empty(expected.shape, np.float32)
    target = np.empty(expected.shape, np.float32)
    for i in range(n):
        exposure = math.exp(rng.uniform(*np.log(EXPOSURE_RANGE)))
        noisy[i], target[i] = poisson_pair(expected[i], exposure, rng)
    m = 1.0 / estimate_gain(noisy, method="lattice")  # exact: max(counts)
    return noisy, target, m.astype(np.float32)


def train(minutes: float, steps: int, batch: int, lr: float, channels: int, seed: int) -> tuple[BiasFreeUNet, dict]:
    """Adam with a cosine schedule over the wall-time budget; returns the model and its loss history."""
    from training.denoise_exposure import FrameStream

    torch.manual_seed(SEEDS["init"] + seed)
    net = BiasFreeUNet(channels)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    stream = FrameStream(SEEDS["frames"] + 10 * seed, "sky+fields")
    rng = np.random.default_rng(SEEDS["noise"] + 10 * seed)
    t0, step, losses, history = time.monotonic(), 0, [], []
    while time.monotonic() - t0 < minutes * 60 and step < steps:
        frac = min((time.monotonic() - t0) / (minutes * 60), 1.0)
        for g in opt.param_groups:
            g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * frac))
        x, t, m = map(torch.from_numpy, training_batch(stream, batch, rng))
        out = denoise_counts(net, x, m)
        num = torch.mean((out - t) ** 2, dim=(1, 2))
        den = torch.clamp(torch.mean((x - t) ** 2, dim=(1, 2)), min=1e-12)
        loss = torch.mean(torch.log(num / den + 1e-6))
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        losses.append(float(loss.detach()))
        if step % 200 == 0:
            history.append({"step": step, "seconds": round(time.monotonic() - t0, 1),
                            "log_mse_ratio": float(np.mean(losses[-200:]))})
            logger.info("step %d (%.0f s): log MSE ratio %.3f", step, time.monotonic() - t0,
                        history[-1]["log_mse_ratio"])
    return net.eval(), {"steps": step, "train_seconds": round(time.monotonic() - t0, 1), "history": history}


# ------------------------------------------------------------------------------------------ export

def _graph_of(module: nn.Module, inputs: dict[str, torch.Tensor], outputs: list[str], path: Path) -> Any:
    """``module`` exported on its own (:func:`write_onnx`), loaded and the file removed."""
    import onnx

    from training.export_image import write_onnx

    write_onnx(module.eval(), inputs, path, outputs)
    model = onnx.load(str(path))
    path.unlink()
    return model


def export_router(net: BiasFreeUNet, mix: Path, path: Path) -> dict:
    """Write one ONNX file: ``image`` -> ``denoised``, the counting network's estimate on counting frames and
    ``mix``'s (the four-noise denoiser) on every other frame (:class:`CountingRouter`); returns
    ``{"path", "sha256", "bytes"}``.

    The route (count scale, Poisson checks) runs on every batch; ``If`` nodes then run only the network a
    batch needs: the counting network alone when every frame is a counting frame, the four-noise one alone
    when none is, both (and a per-frame ``Where``) when the batch mixes them. A camera streams one kind of
    frame, so it pays for one network, not two."""
    import onnx
    import onnx.numpy_helper
    from onnx import TensorProto, compose, helper

    from training.export_image import OPSET
    from trigger.calibration import sha256_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".part.onnx")
    example = torch.rand(2, 64, 64) * 100
    route = _graph_of(CountingRoute(), {"image_in": example}, ["use", "x", "m", "peak"], tmp)
    use, x, m, peak = CountingRoute()(example)
    est = _graph_of(CountingEstimate(net), {"x": x, "m": m, "peak": peak}, ["est"], tmp)
    first = onnx.load(str(mix))
    for g in (route, est):
        if [(o.domain, o.version) for o in first.opset_import] != [(o.domain, o.version) for o in g.opset_import]:
            raise RuntimeError(f"{mix} has opsets {first.opset_import}, the router {g.opset_import} (opset {OPSET})")
    (image,) = first.graph.input
    (mix_out,) = first.graph.output

    def renamed(graph: Any, prefix: str, keep: dict[str, str]) -> tuple[list, list]:
        """(nodes, initializers) of ``graph`` with every tensor and node name prefixed, except ``keep``'s
        (renamed to their values): the graph inputs, which come from the outer scope, and its outputs."""
        g = compose.add_prefix_graph(graph, prefix, rename_inputs=False, rename_outputs=False,
                                     rename_value_infos=False, name_map=dict(keep))
        return list(g.node), list(g.initializer)

    route_nodes, route_inits = renamed(route.graph, "route/", {"image_in": image.name, **{
        k: f"route/{k}" for k in ("use", "x", "m", "peak")}})
    # The sort's K as a constant: the exporter computes it from the shape, and TensorRT's parser wants an
    # initializer (and K <= 3840, hence SORT_CHUNK).
    route_inits.append(onnx.numpy_helper.from_array(np.array([SORT_CHUNK], np.int64), "route/sort_chunk_k"))
    for node in route_nodes:
        if node.op_type == "TopK":
            node.input[1] = "route/sort_chunk_k"
    est_nodes, est_inits = renamed(est.graph, "counts/", {"x": "route/x", "m": "route/m", "peak": "route/peak",
                                                    "est": "counts/est"})
    mix_nodes, mix_inits = renamed(first.graph, "mix/", {image.name: image.name, mix_out.name: "mix/out"})
    frame = [d.dim_param or d.dim_value for d in mix_out.type.tensor_type.shape.dim]

    def out(name: str) -> Any:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, frame)

    def identity(src: str, dst: str) -> Any:
        return helper.make_node("Identity", [src], [dst], name=dst)

    # Each branch holds its own copy of its network's weights: ONNX Runtime's NCHWc layout transform turns a
    # convolution into its blocked kernel only when the weights are initializers of the convolution's own
    # graph (with outer-scope weights the file ran at 0.7x). TensorRT's parser wants the two outputs of an If
    # named apart, as they are here.
    counts_only = helper.make_graph([*est_nodes, identity("counts/est", "counts_only")], "counts_only", [],
                                    [out("counts_only")], initializer=est_inits)
    mix_only = helper.make_graph([*mix_nodes, identity("mix/out", "mix_only")], "mix_only", [], [out("mix_only")],
                                 initializer=mix_inits)
    both = helper.make_graph([*mix_nodes, *est_nodes,
                              helper.make_node("Unsqueeze", ["route/use", "route/frame_axes"], ["both/use"],
                                               name="both/use"),
                              helper.make_node("Where", ["both/use", "counts/est", "mix/out"], ["both"], name="both")],
                             "both", [], [out("both")], initializer=[*mix_inits, *est_inits])
    some = helper.make_graph([helper.make_node("If", ["route/any"], ["some"], name="some", then_branch=both,
                                               else_branch=mix_only)], "some", [], [out("some")])
    main = [*route_nodes,
            helper.make_node("Cast", ["route/use"], ["route/use_f"], to=TensorProto.FLOAT, name="route/use_f"),
            helper.make_node("ReduceMin", ["route/use_f"], ["route/all_f"], keepdims=0, name="route/all_f"),
            helper.make_node("ReduceMax", ["route/use_f"], ["route/any_f"], keepdims=0, name="route/any_f"),
            helper.make_node("Cast", ["route/all_f"], ["route/all"], to=TensorProto.BOOL, name="route/all"),
            helper.make_node("Cast", ["route/any_f"], ["route/any"], to=TensorProto.BOOL, name="route/any"),
            helper.make_node("If", ["route/all"], ["denoised"], name="denoised", then_branch=counts_only,
                             else_branch=some)]
    axes = onnx.numpy_helper.from_array(np.array([1, 2], np.int64), "route/frame_axes")
    graph = helper.make_graph(main, "counting_router", [image], [out("denoised")],
                              initializer=[*route_inits, axes])
    joined = helper.make_model(graph, opset_imports=list(first.opset_import), ir_version=first.ir_version,
                               producer_name="training.denoise_poisson")
    onnx.checker.check_model(joined, full_check=True)
    onnx.save(joined, str(path))
    return {"path": str(path), "sha256": sha256_file(path), "bytes": path.stat().st_size}


def check_export(path: Path, mix: Path, net: BiasFreeUNet) -> dict[str, float]:
    """ONNX Runtime on the joined file against torch (the router on the four-noise file's ORT output), on
    counting frames at several exposures (raw and max-normalised) and on Gaussian-noise frames."""
    from training.export_image import ort_runner

    rng = np.random.default_rng(5)
    from simulators.sky import SkyConfig, SkySimulator, add_noise, normalize_max

    counts = SkySimulator(SkyConfig(), 11).generate_full(12).counts.astype(np.float32)
    lam = SkySimulator(SkyConfig(), 12).generate_full(12).expected
    bright = np.stack([rng.poisson(e / e.max() * 5000) for e in lam]).astype(np.float32)
    gauss = np.stack([add_noise(normalize_max(c), "gaussian", 0.1, rng) for c in counts]).astype(np.float32)
    x = np.concatenate([counts, counts / counts.max(axis=(1, 2), keepdims=True), bright, gauss])
    other = ort_runner(mix, "denoised")(x)
    run = ort_runner(path, "denoised")
    got = run(x)  # a mixed batch: both networks and the per-frame choice
    # A batch of one kind runs one network only (another branch of the graph): the same frames must come out
    # the same, bit for bit.
    for part in (slice(0, 36), slice(36, 48)):
        alone = run(x[part])
        if not np.array_equal(alone, got[part]):
            raise RuntimeError(f"{path}: frames {part.start}-{part.stop - 1} alone in a batch differ from the same "
                               f"frames in a mixed batch by up to {float(np.max(np.abs(alone - got[part])))}")
    with torch.no_grad():
        ref = CountingRouter(net)(torch.from_numpy(x), torch.from_numpy(other)).numpy()
        xn = torch.from_numpy(x / x.max(axis=(1, 2), keepdims=True))
        use = is_counting_frame(xn, count_scale(xn)).numpy()
    scale = np.maximum(1.0, x.max(axis=(1, 2), keepdims=True))
    diff = float(np.max(np.abs(got - ref) / scale))
    if not diff < 1e-3 or not np.isfinite(got).all():
        raise RuntimeError(f"ONNX Runtime and torch disagree on {path}: max scaled difference {diff}")
    if not use[:36].all() or use[36:].any():
        raise RuntimeError(f"the router sent counting frames {np.flatnonzero(~use[:36]).tolist()} to the other model "
                           f"or Gaussian frames {np.flatnonzero(use[36:]).tolist()} to this one")
    return {"max_scaled_diff": diff}


def main(argv: list[str] | None = None) -> int:
    from training.export_image import calibrate_denoise
    from training.train_image import SEEDS as IMAGE_SEEDS
    from training.train_image import denoise_test_sets, simulate_sky
    from trigger.calibration import sha256_file

    p = argparse.ArgumentParser(prog="python -m training.denoise_poisson", description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=35.0, help="wall-time budget of the training loop")
    p.add_argument("--steps", type=int, default=1_000_000, help="at most this many steps (0: no training)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--init-checkpoint", type=Path, help="a model.pt of this trainer (with --steps 0: take it as it is)")
    p.add_argument("--mix", type=Path, help="the four-noise denoiser the export routes every other frame to")
    p.add_argument("--test-images", type=int, default=2000, help="images of the calibration's four-noise test")
    p.add_argument("--run-dir", type=Path, default=Path("runs/denoise-poisson"))
    p.add_argument("--export", type=Path, help=".onnx file to write (with its .calib.json); needs --mix")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if a.export and not a.mix:
        p.error("--export needs --mix (the four-noise denoiser for frames that are not counts)")
    if a.steps == 0 and a.init_checkpoint is None:
        p.error("--steps 0 needs --init-checkpoint")
    torch.set_num_threads(a.threads)
    a.run_dir.mkdir(parents=True, exist_ok=True)
    if a.steps == 0:
        saved = torch.load(a.init_checkpoint)
        net = BiasFreeUNet(saved["channels"])
        net.load_state_dict(saved["state_dict"])
        net.eval()
        info = {"steps": 0, "train_seconds": 0.0, "history": [], "checkpoint": str(a.init_checkpoint),
                "checkpoint_sha256": sha256_file(a.init_checkpoint), "trained": saved.get("provenance")}
    else:
        net, info = train(a.minutes, a.steps, a.batch, a.lr, a.channels, a.seed)
    command = "python -m training.denoise_poisson " + shlex.join(sys.argv[1:] if argv is None else argv)
    prov = {"command": command, "trainer": "training/denoise_poisson.py",
            "architecture": f"BiasFreeUNet({net.channels})", "frames": "sky+fields",
            "exposure_range": list(EXPOSURE_RANGE), "batch_size": a.batch, "lr": a.lr, "seed": a.seed,
            "minutes": a.minutes, "torch": torch.__version__, **{k: v for k, v in info.items() if k != "history"}}
    if a.steps != 0:
        torch.save({"state_dict": net.state_dict(), "channels": net.channels, "provenance": prov},
                   a.run_dir / "model.pt")
    (a.run_dir / "history.json").write_text(json.dumps(info, indent=1))
    if a.export:
        exp = export_router(net, a.mix, a.export)
        exp.update(check_export(a.export, a.mix, net))
        test = simulate_sky(a.test_images, IMAGE_SEEDS["test"], progress=False)
        prov.update({"counting_frames": "this model (Anscombe + bias-free U-net)",
                     "other_frames": {"path": str(a.mix), "sha256": sha256_file(a.mix)},
                     "ort_vs_torch": {"max_scaled_diff": exp["max_scaled_diff"]}})
        calibrate_denoise(a.export, denoise_test_sets(test), noise="mix", provenance=prov)
    return 0


if __name__ == "__main__":
    sys.exit(main())
