"""Train the pulse-trigger VCAE: on simulated waveforms, or with ``--data`` on a recorded noise run.

    python -m training.train_pulse --profile shipped --seed 9 --threads 1 --name pulse_default \
        --export /tmp/pulse_default.onnx   # the shipped model's training, bit for bit (README.md)
    python -m training.train_pulse --data noise_run.h5 [--data more.h5 ...] --profile quick --export my.onnx

A thin command line: the simulated protocol is :mod:`training.pulse_simulated`; with ``--data`` the
model learns a recorded noise run of any detector (any trace length >= 256, any integer or float
dtype) as :mod:`training.pulse_recorded` describes. Unusable input is refused with one line on stderr
and exit status 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import logging
import shlex
import sys
from pathlib import Path
from typing import Any

from training.core.extra import require_train_extra

logger = logging.getLogger("training")


def main(argv: list[str] | None = None) -> int:
    # Before anything imports torch: without the extra, one line that says what to install.
    require_train_extra("train_pulse")
    from training.pulse_simulated import PROFILES, run

    p = argparse.ArgumentParser(prog="python -m training.train_pulse", description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", choices=sorted(PROFILES), default="default",
                   help="shipped: the shipped model's recipe (with --seed 9 --threads 1, its training bit for bit); "
                        "default: the control protocol; quick: seconds, for tests; reference: the published "
                        "protocol. With --data only quick and default (the recorded-run profiles)")
    p.add_argument("--data", type=Path, action="append", metavar="FILE.h5",
                   help="train on this recorded noise run (repeat for more files) instead of simulated waveforms")
    p.add_argument("--signal-template", type=Path, metavar="FILE.npy",
                   help="with --data: the pulse shape injected into held-out noise for model selection and the "
                        "efficiency report (default: see training.pulse_recorded)")
    p.add_argument("--name", help="run folder name under --runs (default: <profile>-<UTC time>)")
    p.add_argument("--runs", type=Path, default=Path("runs"))
    p.add_argument("--export", type=Path, help="write the encoder mean head to this .onnx (+ .calib.json beside)")
    p.add_argument("--seed", type=int, default=0, help="base of the initialisation seeds")
    p.add_argument("--latent-dim", type=int, help="override the profile's k")
    p.add_argument("--variant", choices=("naive", "fixed"), help="override the profile's model variant")
    p.add_argument("--epochs", type=int, help="override the profile's epochs (its starts' epochs are capped to it)")
    p.add_argument("--max-train-seconds", type=float,
                   help="with --data: override the profile's time budget for the training epochs")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default 2, this machine's cores; with --data "
                   "1: its profiles run on a time budget, and a second thread on a core that is busy with other "
                   "work slows every step down many times)")
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    # Root at WARNING: the ONNX exporter's own INFO chatter (onnxscript, onnx_ir) stays quiet.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger.setLevel(args.log_level.upper())
    name = args.name or f"{args.profile}-{dt.datetime.now(dt.UTC).strftime('%Y%m%dT%H%M%SZ')}"
    if args.data:
        return _main_data(p, args, name, sys.argv[1:] if argv is None else argv)
    if args.signal_template or args.max_train_seconds is not None:
        p.error("--signal-template and --max-train-seconds need --data")
    profile = _override(p, PROFILES[args.profile], latent_dim=args.latent_dim, variant=args.variant,
                        epochs=args.epochs)
    run(profile, args.runs / name, seed=args.seed, export=args.export, threads=args.threads or 2)
    return 0


def _override(p: argparse.ArgumentParser, profile: Any, **changes: Any) -> Any:
    """``profile`` with the options given on the command line (an invalid value is a usage error)."""
    changes = {k: v for k, v in changes.items() if v is not None}
    if "epochs" in changes:
        changes["init_epochs"] = min(profile.init_epochs, changes["epochs"])
    try:
        return dataclasses.replace(profile, **changes)
    except ValueError as exc:
        p.error(str(exc))


def _main_data(p: argparse.ArgumentParser, args: argparse.Namespace, name: str, argv: list[str]) -> int:
    from training import pulse_recorded
    from trigger.runfile import RunFileError

    if args.export is None:
        p.error("--data needs --export OUT.onnx")
    if args.profile not in pulse_recorded.DATA_PROFILES:
        p.error(f"--data takes --profile {' or '.join(pulse_recorded.DATA_PROFILES)}, not {args.profile}")
    if args.variant not in (None, "fixed"):
        p.error("--data trains the fixed variant only")
    profile = _override(p, pulse_recorded.DATA_PROFILES[args.profile], latent_dim=args.latent_dim,
                        epochs=args.epochs, max_train_seconds=args.max_train_seconds)
    try:
        pulse_recorded.run(args.data, args.export, profile, args.runs / name, seed=args.seed,
                           template_path=args.signal_template, threads=args.threads or 1,
                           command="python -m training.train_pulse " + shlex.join(argv))
    except (pulse_recorded.DataError, RunFileError, OSError) as exc:
        # One line on stderr and exit status 1 (a full disk included); the existing model (if any) is untouched.
        raise SystemExit(f"train_pulse: error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                         ) from None
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
