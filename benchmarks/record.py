"""``trigger record`` speed: ``trigger replay`` as fast as it goes -> ``trigger record`` -> disk.

Both are real subprocesses on this machine, over loopback TCP, PUSH -> PULL (backpressure: the
replay waits for the recorder, so nothing may be lost). Two streams:

- float32 waveforms of 9,728 samples (the shipped simulator, a pool drawn once and cycled);
- int16 ADC traces of 2,500 samples on a pedestal of 1,000 (an ``.npz`` cycled by replay).

Reported per run: MB/s to disk (file bytes over the time from the recorder's first message to its
exit, which includes its closing fsync, so the page cache does not flatter the figure), events
lost (sent but not in the file: must be 0), gaps and rejects the recorder counted, and the
recorder's CPU use (its process CPU seconds over the same time, in cores). The recordings are
deleted afterwards.

A last, long run (``--long-gb``, float32) writes far more than the kernel keeps dirty in the page
cache (20% of memory), so its rate is what the disk sustains.

    python benchmarks/record.py [--gb 2.0] [--repeats 3] [--long-gb 12] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import setup_logging, write_result  # noqa: E402

from trigger.runfile import open_run  # noqa: E402
from trigger.testing import ManagedProcess, free_port  # noqa: E402

log = setup_logging()
TARGET_MB_S = 200.0


def one_run(work: Path, name: str, replay_args: list[str], events: int, batch: int) -> dict:
    ep = f"tcp://127.0.0.1:{free_port()}"
    out = work / f"{name}.h5"
    summary = work / f"{name}.json"
    rec = ManagedProcess([sys.executable, "-m", "trigger", "record", "--input", ep, "--input-pattern", "pull",
                          "--output", str(out), "--events", str(events), "--json", str(summary),
                          "--log-level", "INFO"], " ready: ", startup_timeout=60)
    try:
        t0 = time.monotonic()
        sent = subprocess.run([sys.executable, "-m", "trigger", "replay", *replay_args, "--output", ep,
                               "--pattern", "push", "--rate", "0", "--events", str(events), "--batch", str(batch),
                               "--no-truth", "--log-level", "WARNING"], capture_output=True, text=True, timeout=900)
        replay_s = time.monotonic() - t0
        if sent.returncode != 0:
            raise RuntimeError(f"replay failed: {sent.stderr[-2000:]}")
        code = rec.proc.wait(timeout=900)
    finally:
        rec.close()
    if code != 0:
        raise RuntimeError(f"record exited {code}:\n{rec.text(20)}")
    s = json.loads(summary.read_text())
    with open_run(out) as r:
        in_file = r.n_events
        chunk_mib = r.chunk_events * int(np.prod(r.event_shape)) * r.dtype.itemsize / 2**20
    size = out.stat().st_size
    out.unlink()
    res = {"events_sent": events, "events_in_file": in_file, "lost": events - in_file, "gaps": s["gaps"],
           "rejected": s["rejected"], "file_bytes": size, "seconds": s["seconds"],
           "mb_per_s_to_disk": size / 1e6 / s["seconds"], "payload_mb_per_s": s["bytes"] / 1e6 / s["seconds"],
           "recorder_cpu_cores": s["cpu_seconds"] / s["seconds"], "replay_wall_seconds": replay_s,
           "chunk_mib": chunk_mib}
    log.info("%s: %.0f MB/s to disk (%.2f GB in %.1f s), %d lost, %d gaps, recorder CPU %.2f cores", name,
             res["mb_per_s_to_disk"], size / 1e9, s["seconds"], res["lost"], res["gaps"], res["recorder_cpu_cores"])
    return res


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gb", type=float, default=2.0, help="bytes of events per run, in GB")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--long-gb", type=float, default=12.0, help="one sustained float32 run of this size (0: none)")
    p.add_argument("--dir", type=Path, help="where to write the recordings (default: a temporary directory)")
    a = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="record-bench-", dir=a.dir))
    try:
        rng = np.random.default_rng(11)
        adc = work / "adc.npz"
        np.savez(adc, data=(1000 + rng.normal(0, 12, (4096, 2500))).astype("<i2"))
        cases = {
            "float32_9728": (["--simulate", "waveform", "--pool", "4096"], 9728 * 4, 32),
            "int16_2500": (["--file", str(adc)], 2500 * 2, 256),
        }
        runs: dict[str, list[dict]] = {k: [] for k in cases}
        for _ in range(a.repeats):
            for name, (args, event_bytes, batch) in cases.items():
                events = int(a.gb * 1e9 / event_bytes) // batch * batch
                runs[name].append(one_run(work, name, args, events, batch))
        if a.long_gb:
            args, event_bytes, batch = cases["float32_9728"]
            events = int(a.long_gb * 1e9 / event_bytes) // batch * batch
            runs["float32_9728_sustained"] = [one_run(work, "float32_9728_sustained", args, events, batch)]
    finally:
        shutil.rmtree(work, ignore_errors=True)

    rows = []
    summary = {}
    for name, rs in runs.items():
        rates = [r["mb_per_s_to_disk"] for r in rs]
        lost = sum(r["lost"] + r["gaps"] for r in rs)
        cpu = [r["recorder_cpu_cores"] for r in rs]
        summary[name] = {"mb_per_s_to_disk_median": float(np.median(rates)), "mb_per_s_range": [min(rates),
                         max(rates)], "events_lost": lost, "recorder_cpu_cores_median": float(np.median(cpu))}
        what = {"float32_9728": "float32 waveforms, 9,728 samples", "int16_2500": "int16 traces, 2,500 samples",
                "float32_9728_sustained": "float32 waveforms, one long run past the page cache"}[name]
        rows.append({"benchmark": f"record: replay (as fast as possible) -> record, {what}",
                     "measured": f"{np.median(rates):,.0f} MB/s to disk, median of {len(rs)} run(s) of "
                                 f"{rs[0]['file_bytes'] / 1e9:.1f} GB [{min(rates):,.0f}, {max(rates):,.0f}], fsync "
                                 f"included; {lost} events lost; recorder CPU {np.median(cpu):.2f} cores "
                                 f"(chunks of {rs[0]['chunk_mib']:.1f} MiB); shared, noisy machine",
                     "target": f">= {TARGET_MB_S:.0f} MB/s, nothing lost",
                     "met": bool(np.median(rates) >= TARGET_MB_S and lost == 0)})
    path = write_result("record", {"runs": runs, "summary": summary, "rows": rows,
                                   "settings": {"gb_per_run": a.gb, "repeats": a.repeats, "long_gb": a.long_gb,
                                                "pattern": "push -> pull"}})
    log.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
