"""Does the blend toward the input (``training/radio_blend.py``) move the radio DAE's part-2 figures?

    python benchmarks/radio_blend_check.py --base BASE.onnx [--model trigger/models/radio_denoise.onnx] [--traces 2000]

On the test traces of ``benchmarks/radio.py`` (seed ``503 * 10 + code`` per noise model, ``--traces`` each,
default RadioConfig, SNR 5-100) both models' outputs are scored under the four readings of
``benchmarks/radio.py`` (:func:`radio.readings`), and the amplitude reading's change is given per noise model
with a paired 95% bootstrap interval over traces (seed 641). ``--base`` is the unblended DAE, e.g.
``git show 37dacf8:trigger/models/radio_denoise.onnx > base.onnx``. The never-worse figures over SNR
are ``benchmarks/never_worse.py``'s. Results: ``results/radio_blend_check.json``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from _common import setup_logging, write_result
from radio import MODEL, NOISE_MODELS, SEEDS, readings, within_amplitude

log = setup_logging()
N_BOOT = 2000


def main() -> int:
    from simulators.radio import simulate
    from training.train_radio import ort_infer
    from trigger.calibration import sha256_file

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", type=Path, required=True, help="the unblended radio DAE (.onnx)")
    p.add_argument("--model", type=Path, default=MODEL)
    p.add_argument("--traces", type=int, default=2000, help="test traces per noise model")
    p.add_argument("--name", default="radio_blend_check")
    a = p.parse_args()
    t0 = time.perf_counter()
    rng = np.random.default_rng(641)
    out: dict = {"settings": {"traces": a.traces, "test_seeds": {n: SEEDS["test"] * 10 + k
                                                                 for k, n in enumerate(NOISE_MODELS)}},
                 "sha256": {"base": sha256_file(a.base), "model": sha256_file(a.model)}, "models": {}, "rows": []}
    for k, name in enumerate(NOISE_MODELS):
        b = simulate(a.traces, SEEDS["test"] * 10 + k, name)
        sig = b.truth["is_signal"].astype(bool)
        rec = {"base": ort_infer(a.base, b.traces), "model": ort_infer(a.model, b.traces)}
        hits = {m: within_amplitude(r, b.clean)[sig].astype(float) for m, r in rec.items()}
        d = hits["model"] - hits["base"]
        boot = d[rng.integers(0, len(d), (N_BOOT, len(d)))].mean(axis=1)
        ci = [float(v) for v in np.quantile(boot, [0.025, 0.975])]
        out["models"][name] = {"readings": {m: readings(r, b) for m, r in rec.items()},
                               "amplitude_change": float(d.mean()), "amplitude_change_interval": ci,
                               "traces_changed": int(np.sum(d != 0))}
        log.info("%s: within 2%% base %.4f, blended %.4f, change %+.4f %s", name, hits["base"].mean(),
                 hits["model"].mean(), d.mean(), ci)
        out["rows"].append({
            "benchmark": f"Radio DAE blended toward its input, {name} noise: peak amplitude within 2% "
                         f"({int(sig.sum())} test traces, SNR 5-100), change from the unblended DAE",
            "measured": f"{hits['model'].mean():.1%} (was {hits['base'].mean():.1%}); change "
                        f"{100 * d.mean():+.2f} [{100 * ci[0]:+.2f}, {100 * ci[1]:+.2f}] points (paired 95%)",
            "target": "within about 1 point of the unblended DAE",
            "met": bool(max(abs(ci[0]), abs(ci[1])) < 0.01)})
    out["seconds"] = round(time.perf_counter() - t0, 1)
    path = write_result(a.name, out)
    log.info("wrote %s in %.0f s", path, out["seconds"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
