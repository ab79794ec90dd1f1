"""Waveform simulator throughput on one CPU core: waveforms/s, and the ratio to a memset floor.

    python benchmarks/simulator.py [--core N] [--seconds 5] [--repeats 3]

The process is pinned to one core (``os.sched_setaffinity``) with ``NUMBA_NUM_THREADS=1`` set
before numba is imported. After a warm-up (numba compilation and first page faults excluded), it
calls ``WaveformSimulator.generate(4096)`` until the simulator has run for at least ``--seconds``
(its own time, the baseline's below not counted) and counts waveforms per second; that is one
repeat, the reported rate is the median over repeats.

On a shared machine an absolute rate moves with whatever else runs. So every simulator call is
paired with a baseline call in the same process, on the same core, alternating call by call:
``np.empty((4096, n_samples), float32)`` followed by ``.fill(0)`` -- allocating and writing the
same array, the least any generator of this output must do. ``ratio = simulator / baseline`` is
the fraction of the memory-bandwidth floor the simulator reaches, and is steadier than the rate.
Target: >= 50,000 waveforms/s.
"""

from __future__ import annotations

import os

os.environ["NUMBA_NUM_THREADS"] = "1"  # before numba is imported (by the simulator)

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import numpy as np  # noqa: E402
from _common import pin_to_one_core, setup_logging, write_result  # noqa: E402
from tqdm import tqdm  # noqa: E402

from simulators.waveform import WaveformConfig, WaveformSimulator  # noqa: E402

TARGET_WF_PER_S = 50_000
CHUNK = 4096
log = setup_logging()


def timed_pair(simulate: Callable[[], None], baseline: Callable[[], None], per_call: int, seconds: float,
               desc: str) -> dict[str, float]:
    """Alternate ``simulate`` and ``baseline`` call by call until ``simulate`` has run ``seconds``.

    Alternating (rather than one block after the other) exposes both to the same neighbours on a
    shared machine, so their ratio is steadier than either rate.
    """
    t_sim = t_base = 0.0
    n = 0
    clock = time.perf_counter
    with tqdm(total=round(seconds, 1), desc=desc, unit="s", leave=False,
              bar_format="{desc}: {bar} {n:.1f}/{total:.1f} s") as bar:
        while t_sim < seconds:
            t0 = clock()
            simulate()
            t1 = clock()
            baseline()
            t2 = clock()
            bar.update(min(t_sim + t1 - t0, seconds) - min(t_sim, seconds))
            t_sim += t1 - t0
            t_base += t2 - t1
            n += per_call
    return {"simulator_wf_per_s": n / t_sim, "memset_wf_per_s": n / t_base, "ratio": t_base / t_sim,
            "waveforms": n, "simulator_seconds": t_sim, "memset_seconds": t_base}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--core", type=int, default=None, help="CPU to pin to (default: the last one allowed)")
    p.add_argument("--seconds", type=float, default=5.0, help="minimum duration of one repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="simulator", help="result file name (results/<name>.json)")
    a = p.parse_args(argv)

    core = pin_to_one_core(p, a.core)

    config = WaveformConfig()
    sim = WaveformSimulator(config, seed=a.seed, signal_fraction=0.5)
    shape = (CHUNK, config.n_samples)

    def simulate() -> None:
        sim.generate(CHUNK)

    def memset() -> None:
        np.empty(shape, np.float32).fill(0)

    t = time.perf_counter()
    simulate()  # numba compiles (or loads its cache) here
    log.info("warm-up: first generate(%d) took %.2f s (compilation included)", CHUNK, time.perf_counter() - t)
    for _ in range(2):
        simulate()
        memset()

    runs = []
    for r in range(a.repeats):
        run = timed_pair(simulate, memset, CHUNK, a.seconds, f"repeat {r + 1}/{a.repeats}")
        runs.append(run)
        log.info("repeat %d: simulator %.0f wf/s, memset %.0f wf/s, ratio %.3f", r + 1, run["simulator_wf_per_s"],
                 run["memset_wf_per_s"], run["ratio"])

    rate = statistics.median(r["simulator_wf_per_s"] for r in runs)
    base = statistics.median(r["memset_wf_per_s"] for r in runs)
    ratio = statistics.median(r["ratio"] for r in runs)
    bytes_per_wf = config.n_samples * 4
    result = {
        "description": "WaveformSimulator.generate throughput on one pinned core, after warm-up",
        "settings": {"core": core, "chunk": CHUNK, "min_seconds_per_repeat": a.seconds, "repeats": a.repeats,
                     "seed": a.seed, "n_samples": config.n_samples, "signal_fraction": 0.5,
                     "noise_mean_pulses": config.noise_mean_pulses, "numba_num_threads": 1},
        "simulator_wf_per_s": rate,
        "simulator_us_per_wf": 1e6 / rate,
        "simulator_gb_per_s": rate * bytes_per_wf / 1e9,
        "memset_wf_per_s": base,
        "memset_gb_per_s": base * bytes_per_wf / 1e9,
        "ratio_to_memset": ratio,
        "target_wf_per_s": TARGET_WF_PER_S,
        "meets_target": rate >= TARGET_WF_PER_S,
        "aggregation": "median over repeats; ratio is the median of per-repeat ratios; simulator and memset "
                       "calls alternate within a repeat",
        "repeats": runs,
    }
    path = write_result(a.name, result)
    log.info("simulator %.0f wf/s (%.1f us/wf, %.2f GB/s) on CPU %d; memset floor %.0f wf/s (%.2f GB/s); "
             "ratio %.3f; target >= %d wf/s: %s", rate, 1e6 / rate, result["simulator_gb_per_s"], core, base,
             result["memset_gb_per_s"], ratio, TARGET_WF_PER_S, "met" if result["meets_target"] else "NOT met")
    log.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
