"""Throughput regression check: the pulse trigger against the issue-16 yardstick, measured in the same run.

``benchmarks/throughput.py --ci`` (about 30 s on 2 cores) measures, as ratios to the yardstick
(``benchmarks/yardstick/pulse_default_8f08e6d.onnx`` on ONNX Runtime with the daemon's default
settings, timed in alternating windows with the candidate):

* the numba backend, bare, median of 5 pairs of alternating 0.4 s windows at batch 256;
* end to end (readout -> ``trigger serve`` subprocess -> subscriber, nothing lost) for float32 and
  int16 streams, three runs of 20,000 events each, every run bracketed by 1 s yardstick windows.

A ratio cancels the machine's speed, which on a shared CI machine drifts by 2x from minute to
minute; what it does not cancel is the noise of short windows, and the floors below sit under the
lowest ratio seen in repeated runs on a loaded 2-core machine (how they were chosen:
benchmarks/README.md, "Throughput regression check"). They catch what matters: the fast kernel
lost (bare back near 1x), or the daemon's path losing a large part of it (an extra copy or
conversion per event shows as a drop of the end-to-end ratio, not of the bare one).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Floors of the paired ratios to the yardstick, about 0.65-0.7x the lowest seen on any machine: bare 3.09
# (this project's loaded 2-core machine), end to end float32 1.26 and int16 1.68 (the CI machine, where
# the end-to-end ratios came out 0.6x this machine's 2.06 and 2.48: its two cores share more between
# the daemon, the readout and the collector than a single-threaded bare run notices; benchmarks/README.md).
BARE_FLOOR = 2.0
E2E_FLOOR = {"float32": 0.85, "int16": 0.85}


@pytest.mark.slow
@pytest.mark.exclusive
def test_pulse_throughput_against_the_yardstick(tmp_path):
    out = tmp_path / "ci.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "throughput.py"), "--ci", "--out", str(out),
                           "--pairs", "5", "--window", "0.4", "--events", "20000", "--repeats", "3"],
                          cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    bare = result["bare"]
    by_dtype = result["end_to_end_by_dtype"]
    summary = (f"bare {bare['ratio_median']:.2f} {bare['ratio_range']}; "
               + "; ".join(f"{k} e2e {v['ratio_to_yardstick_median']:.2f} ({v['median_events_per_second']:.0f}/s)"
                           for k, v in by_dtype.items()))
    assert set(by_dtype) == {"float32", "int16"}, summary
    for dtype, d in by_dtype.items():
        assert d["lost_events"] == 0, f"{dtype}: {d['lost_events']} events lost; {summary}"
    assert bare["ratio_median"] >= BARE_FLOOR, f"bare backend regressed against the yardstick: {summary}"
    for dtype, floor in E2E_FLOOR.items():
        assert by_dtype[dtype]["ratio_to_yardstick_median"] >= floor, \
            f"end to end ({dtype}) regressed against the yardstick: {summary}"
