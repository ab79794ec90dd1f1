"""Dead-start study: how often does a fresh VCAE never learn, why, and does the fix cure it?

    python -m training.deadstart --seeds 20 --output runs/deadstart

Each *setup* (a model variant and a KL weight) is trained from ``--seeds`` random initialisations
on the same simulated data with the reference's optimiser (Adam, lr 1e-3, batch 32) for
``--epochs`` epochs, i.e. the reference's 20-epoch selection phase, at reduced data size.

Operational definition. A run is a **dead start** when, after the phase, its validation
reconstruction error is not at least 10% below that of the best input-independent prediction,
the mean training waveform (``val_sse >= 0.9 * baseline_sse``, both in the units the model's loss
uses): the decoder output carries no information about the input. Reported beside it: the
latent means' separation of noise-only from clearly visible pulses (ROC AUC of the distance from
the noise median, signals with amplitude > 0.1; ``no_information`` when < 0.6) and their spread.
The two agree when the encoder dies; they disagree (AUC high, SSE dead) when the encoder works
but the decoder has learnt to ignore z, the second failure mode this study found.

Diagnostics recorded per run: the fraction of dead ReLU units (zero for every validation input)
per encoder layer after every epoch and every few steps of the first epoch, the encoder's
pre-activation scale at initialisation, the KL term. Writes ``deadstart.json`` and ``deadstart.png``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from training.pulse_simulated import make_model, simulate_chunked
from training.vcae import VCAE, vae_loss

logger = logging.getLogger("training")

DATA_SEED = 201  # its own stream: not the training data of the shipped model
DEAD_SSE_RATIO = 0.9
PROBE_EVERY = 5  # steps between diagnostics in the first epoch


@dataclass(frozen=True)
class Setup:
    name: str
    variant: str
    beta: float = 1.0
    """KL weight; 0 switches the KL term off (an ablation that isolates its role)."""
    initial_log_var: float | None = None
    """None: the variant's default (make_model)."""
    description: str = ""


SETUPS = {
    "naive": Setup("naive", "naive", description="reference as written: raw input, ReLU output, SSE + KL"),
    "scaled": Setup("scaled", "fixed", initial_log_var=0.0,
                    description="half the fix: standardised input inside the graph, linear output, but the "
                                "reference's initial posterior variance (log_var bias 0)"),
    "fixed": Setup("fixed", "fixed", description="the fix: standardised input inside the graph, linear output, "
                   "initial log_var bias -10"),
    "naive_no_kl": Setup("naive_no_kl", "naive", beta=0.0,
                         description="ablation: naive with the KL term switched off"),
}

_DATA: dict = {}


def _worker_init(n_train: int, n_val: int, data_seed: int = DATA_SEED) -> None:
    torch.set_num_threads(1)  # one process per core; two intra-op threads would fight
    x, amp = simulate_chunked(n_train + n_val, data_seed)
    _DATA.update(x_train=x[:n_train], x_val=x[n_train:], a_val=amp[n_train:])


def _dead_fractions(model: VCAE, x: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per encoder layer: fraction of ReLU units that are zero for every input in ``x``, and the
    median over units of the largest pre-activation (the scale a bias must move to kill a unit)."""
    dead, scale = [], []
    with torch.no_grad():
        h = model.encoder.normalise(x).unsqueeze(1)
        for conv in model.encoder.convs:
            pre = conv(h)
            peak = pre.amax(dim=(0, 2))
            dead.append(float((peak <= 0).float().mean()))
            scale.append(float(pre.abs().amax(dim=(0, 2)).median()))
            h = F.avg_pool1d(F.relu(pre), 2)
    return dead, scale


def _auc(neg: np.ndarray, pos: np.ndarray) -> float:
    """ROC AUC of ``pos`` above ``neg`` (Mann-Whitney with mid-ranks)."""
    allv = np.concatenate([neg, pos])
    order = allv.argsort(kind="mergesort")
    ranks = np.empty(len(allv))
    ranks[order] = np.arange(1, len(allv) + 1)
    # ties (a collapsed encoder gives identical z): average their ranks
    _, inv, counts = np.unique(allv, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=ranks)
    ranks = (sums / counts)[inv]
    return float((ranks[len(neg):].sum() - len(pos) * (len(pos) + 1) / 2) / (len(neg) * len(pos)))


def _epoch_diagnostics(model: VCAE, x_val: torch.Tensor, a_val: np.ndarray, base_sse: float, beta: float) -> dict:
    model.eval()
    with torch.no_grad():
        _, sse, kl = vae_loss(model, x_val, beta)
        mu = model.encoder(x_val)[0].numpy()
    dead, _ = _dead_fractions(model, x_val)
    centre = np.median(mu[a_val == 0], axis=0)
    d = np.linalg.norm(mu - centre, axis=1)
    return {"val_sse": float(sse), "sse_ratio": float(sse) / base_sse, "kl": float(kl), "dead": dead,
            "z_std": mu.std(axis=0).tolist(), "auc": _auc(d[a_val == 0], d[a_val > 0.1])}


def run_one(setup: Setup, seed: int, epochs: int, batch_size: int = 32, lr: float = 1e-3) -> dict:
    """Train one setup from one seed; returns its per-epoch and first-epoch diagnostics."""
    t0 = time.perf_counter()
    x_np = _DATA["x_train"]
    x_train, x_val = torch.from_numpy(x_np), torch.from_numpy(_DATA["x_val"])
    a_val = _DATA["a_val"]
    torch.manual_seed(seed)
    model = make_model(setup.variant, x_np, initial_log_var=setup.initial_log_var)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        tgt = model.target(x_train)
        mean_wf = tgt.mean(0)
        tv = model.target(x_val)
        base_sse = float((tv - mean_wf).square().sum(1).mean())
    probe = x_val[:128]
    dead0, scale0 = _dead_fractions(model, probe)
    first_epoch = [{"step": 0, "dead": dead0, "bias": [c.bias.mean().item() for c in model.encoder.convs]}]
    epochs_out = []
    step = 0
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(x_train), generator=gen)
        for i in range(0, len(x_train), batch_size):
            opt.zero_grad(set_to_none=True)
            loss, sse, kl = vae_loss(model, x_train[perm[i:i + batch_size]], setup.beta)
            loss.backward()
            opt.step()
            step += 1
            if epoch == 0 and step % PROBE_EVERY == 0:
                dead, _ = _dead_fractions(model, probe)
                first_epoch.append({"step": step, "dead": dead, "sse": sse.item(), "kl": kl.item(),
                                    "bias": [c.bias.mean().item() for c in model.encoder.convs]})
                model.train()
        epochs_out.append({"epoch": epoch + 1, **_epoch_diagnostics(model, x_val, a_val, base_sse, setup.beta)})
    last = epochs_out[-1]
    return {"setup": setup.name, "seed": seed, "baseline_sse": base_sse, "init_dead": dead0,
            "init_preact_scale": scale0, "first_epoch": first_epoch, "epochs": epochs_out,
            "dead_start": last["sse_ratio"] >= DEAD_SSE_RATIO, "no_information": last["auc"] < 0.6,
            "seconds": time.perf_counter() - t0}


def _first_epoch_dead_for_good(r: dict) -> int | None:
    """The first epoch after which some encoder layer stayed fully dead to the end, or None."""
    layers_dead = [max(e["dead"]) >= 1.0 for e in r["epochs"]]
    for i in range(len(layers_dead)):
        if all(layers_dead[i:]):
            return r["epochs"][i]["epoch"]
    return None


def summarise(results: list[dict]) -> dict:
    out = {}
    for name in dict.fromkeys(r["setup"] for r in results):
        rs = sorted((r for r in results if r["setup"] == name), key=lambda r: r["seed"])
        dead = [r["seed"] for r in rs if r["dead_start"]]
        out[name] = {
            "description": SETUPS[name].description if name in SETUPS else "",
            "runs": len(rs), "dead_starts": len(dead), "dead_seeds": dead,
            "rate": len(dead) / len(rs),
            "criteria_agree": all(r["dead_start"] == r["no_information"] for r in rs),
            "dead_with_a_fully_dead_encoder_layer": sum(
                1 for r in rs if r["dead_start"] and max(r["epochs"][-1]["dead"]) >= 1.0),
            "epoch_layer_died": {r["seed"]: _first_epoch_dead_for_good(r) for r in rs if r["dead_start"]},
            "mean_dead_fraction_init": np.mean([r["init_dead"] for r in rs], axis=0).tolist(),
            "mean_dead_fraction_epoch1": np.mean([r["epochs"][0]["dead"] for r in rs], axis=0).tolist(),
            "mean_dead_fraction_final": np.mean([r["epochs"][-1]["dead"] for r in rs], axis=0).tolist(),
            "slow_starts_epoch1": sum(1 for r in rs if r["epochs"][0]["sse_ratio"] >= DEAD_SSE_RATIO),
            "sse_ratio": [r["epochs"][-1]["sse_ratio"] for r in rs],
            "auc": [r["epochs"][-1]["auc"] for r in rs],
            "median_init_preact_scale": np.median([r["init_preact_scale"] for r in rs], axis=0).tolist(),
            "median_seconds": float(np.median([r["seconds"] for r in rs])),
        }
    return out


def plot(path: Path, results: list[dict], summary: dict, lr: float) -> None:
    import matplotlib.pyplot as plt

    names = list(summary)
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    ax = axes[0, 0]
    for i, name in enumerate(names):
        rs = [r for r in results if r["setup"] == name]
        y = [r["epochs"][-1]["sse_ratio"] for r in rs]
        x = i + np.random.default_rng(0).uniform(-0.15, 0.15, len(y))
        ax.scatter(x, y, c=["red" if r["dead_start"] else "C0" for r in rs], s=18)
    ax.axhline(DEAD_SSE_RATIO, color="k", ls=":", label=f"dead-start threshold ({DEAD_SSE_RATIO})")
    ax.set_xticks(range(len(names)), [f"{n}\n{summary[n]['dead_starts']}/{summary[n]['runs']} dead" for n in names])
    ax.set(ylabel="val SSE / SSE of the mean waveform", yscale="log", title="after the selection phase (red: dead)")
    ax.legend(fontsize=8)

    ax = axes[0, 1]
    for r in results:
        if r["setup"] != "naive":
            continue
        steps = [p["step"] for p in r["first_epoch"]]
        frac = [p["dead"][1] for p in r["first_epoch"]]
        ax.plot(steps, frac, color="red" if r["dead_start"] else "C0", alpha=0.8 if r["dead_start"] else 0.35)
    ax.set(xlabel="optimiser step (first epoch)", ylabel="fraction of dead units, encoder conv 2",
           title="naive: dying ReLUs in the first epoch (red: dead starts)")

    ax = axes[1, 0]
    for r in results:
        if r["setup"] not in ("naive", "fixed"):
            continue
        e = [x["epoch"] for x in r["epochs"]]
        ls = "-" if r["setup"] == "naive" else "--"
        color = "red" if r["dead_start"] else ("C0" if r["setup"] == "naive" else "C2")
        ax.plot(e, [x["auc"] for x in r["epochs"]], ls=ls, color=color, alpha=0.6)
    ax.set(xlabel="epoch", ylabel="AUC noise vs signal (A > 0.1), distance in latent",
           title="information in z_mean (solid naive, dashed fixed)", ylim=(0.4, 1.02))

    ax = axes[1, 1]
    for name in names:
        s = summary[name]["median_init_preact_scale"]
        ax.plot(range(1, len(s) + 1), s, "o-", label=name)
    ax.axhline(lr, color="k", ls=":", label=f"one Adam step on a bias (lr = {lr:g})")
    ax.set(yscale="log", xlabel="encoder conv layer", ylabel="median over units of max |pre-activation|",
           title="activation scale at initialisation vs Adam's step", xticks=[1, 2, 3])
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.deadstart", description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=20, help="the selection phase's length")
    p.add_argument("--ablation-epochs", type=int, default=8, help="epochs for the ablation setups")
    p.add_argument("--n-train", type=int, default=2000)
    p.add_argument("--n-val", type=int, default=500)
    p.add_argument("--setups", nargs="+", default=["naive", "scaled", "fixed", "naive_no_kl"], choices=sorted(SETUPS))
    p.add_argument("--data-seed", type=int, default=DATA_SEED, help="simulator seed of the study's waveforms")
    p.add_argument("--workers", type=int, default=2, help="processes, one torch thread each")
    p.add_argument("--output", type=Path, default=Path("runs/deadstart"))
    p.add_argument("--include", type=Path, nargs="*", default=[],
                   help="deadstart.json files of earlier runs whose results join this summary and plot")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)
    args.output.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    jobs = []
    for name in args.setups:
        setup = SETUPS[name]
        epochs = args.ablation_epochs if name.startswith("naive_") else args.epochs
        jobs += [(setup, s, epochs) for s in range(args.first_seed, args.first_seed + args.seeds)]
    results = []
    with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn"), initializer=_worker_init,
                             initargs=(args.n_train, args.n_val, args.data_seed)) as pool:
        futures = [pool.submit(run_one, *j) for j in jobs]
        for f in tqdm(as_completed(futures), total=len(futures), desc="dead-start study", unit="run"):
            r = f.result()
            results.append(r)
            logger.info("%s seed %d: sse ratio %.3f, auc %.3f, dead layers %s%s", r["setup"], r["seed"],
                        r["epochs"][-1]["sse_ratio"], r["epochs"][-1]["auc"], r["epochs"][-1]["dead"],
                        "  DEAD START" if r["dead_start"] else "")
    included = []
    for path in args.include:
        earlier = json.loads(path.read_text())
        included.append({"file": str(path), "settings": earlier["settings"]})
        results += [r for r in earlier["runs"] if r["setup"] not in args.setups]
    order = {name: i for i, name in enumerate(SETUPS)}
    results.sort(key=lambda r: (order.get(r["setup"], 99), r["seed"]))
    summary = summarise(results)
    settings = {"seeds": list(range(args.first_seed, args.first_seed + args.seeds)), "epochs": args.epochs,
                "ablation_epochs": args.ablation_epochs, "n_train": args.n_train, "n_val": args.n_val,
                "batch_size": 32, "lr": 1e-3, "optimizer": "Adam", "data_seed": args.data_seed,
                "dead_start_definition": f"val_sse >= {DEAD_SSE_RATIO} * sse of predicting the mean training "
                                         "waveform, after the last epoch",
                "wall_seconds": time.perf_counter() - t0, "included": included}
    (args.output / "deadstart.json").write_text(json.dumps(
        {"settings": settings, "summary": summary, "runs": results}, indent=1, default=float) + "\n")
    plot(args.output / "deadstart.png", results, summary, 1e-3)
    for name, s in summary.items():
        logger.info("%s: %d of %d dead starts (seeds %s)", name, s["dead_starts"], s["runs"], s["dead_seeds"])
    logger.info("wrote %s (%.0f s)", args.output, settings["wall_seconds"])
    return 0 if math.isfinite(settings["wall_seconds"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
