"""Rebuild the results table of benchmarks/README.md from benchmarks/results/*.json.

    python benchmarks/report.py

The table sits between the markers ``<!-- results:begin -->`` and ``<!-- results:end -->``; the
rest of the README is left alone. Each row names the machine and the commit its JSON recorded.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
README = HERE / "README.md"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def _load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _runs(lat: dict) -> str:
    """The suffix " (the run with the median p99 of N; p99 a-b ms)" for a latency measured more than once, else ""."""
    p99s = lat.get("p99_of_each_run_seconds", [])
    if len(p99s) < 2:
        return ""
    return f" (the run with the median p99 of {len(p99s)}; p99 {min(p99s) * 1e3:.1f}-{max(p99s) * 1e3:.1f} ms)"


def _mark(ok: bool) -> str:
    return "met" if ok else "**missed**"


def _machine(d: dict) -> str:
    m = d["machine"]
    return (f"{m['cpu']}, {m['cores']} cores, load {m['load_average'][0]:.1f}; "
            f"{m['date'][:16]}Z, {str(m['git_commit'])[:8]}")


def rows() -> list[tuple[str, str, str, str, str]]:
    out = []
    if (s := _load("simulator")) is not None:
        out.append(("Simulator, one core", f"{s['simulator_wf_per_s']:,.0f} waveforms/s "
                    f"({s['ratio_to_memset']:.2f}x a memset of the same array)", ">= 50,000 waveforms/s",
                    _mark(s["simulator_wf_per_s"] >= 50_000), _machine(s)))
    if (k := _load("sky_simulator")) is not None:
        out.append(("Sky image simulator (64x64), one core",
                    f"{k['images_per_s']:,.0f} images/s wall clock ({k['images_per_cpu_s']:,.0f} per CPU-second; "
                    f"{k['ratio_to_numpy_poisson']:.2f}x numpy's Poisson draw alone)", ">= 2,000 images/s",
                    _mark(k["meets_target"]), _machine(k)))
    for name in ("throughput", "throughput_segment", "throughput_denoise"):
        if (t := _load(name)) is None:
            continue
        what = t.get("pipeline", "pulse")
        unit = "events" if what == "pulse" else "frames"
        sm = t["summary"]
        lo, hi = sm["ratio_end_to_end_over_bare_range"]
        out.append((f"{what}: end to end / bare backend, same batch size, paired",
                    f"{sm['ratio_end_to_end_over_bare']:.2f} median of "
                    f"{sum(r.get('wire_dtype', 'float32') == 'float32' for r in t['end_to_end'])} pairs [{lo:.2f}, "
                    f"{hi:.2f}]; best end to end {sm['end_to_end_best_events_per_second']:,.0f} {unit}/s "
                    f"(max_batch {sm['end_to_end_best_max_batch']}), {sm['lost_events']} {unit} lost"
                    + "".join(f"; {k} {v}" for k, v in t.get("backend_options", {}).items())
                    + (f"; cores busy (of {t['machine']['cores']}): daemon {c['daemon']:.2f} (ZeroMQ I/O "
                       f"{c['daemon_zmq_io']:.2f}), readout + collector {c['readout_and_collector']:.2f}"
                       if (c := sm.get("cores_busy_median")) else ""), ">= 0.8",
                    _mark(sm["ratio_end_to_end_over_bare"] >= 0.8), _machine(t)))
        lat = t["latency_half_load"]["latency_seconds"]
        pulse = what == "pulse"  # the 5 ms target is the waveform trigger's; image issues set none
        pace = "half of the median sustained rate" if "latency_pace" in t else "half of max"
        out.append((f"{what}: latency receive->publish at {pace}",
                    f"p50 {lat['p50'] * 1e3:.2f} ms, p99 {lat['p99'] * 1e3:.2f} ms, p99.9 {lat['p99.9'] * 1e3:.2f} ms "
                    f"at {t['latency_half_load']['rate']:,.0f} {unit}/s" + _runs(t['latency_half_load']),
                    "p99 < 5 ms" if pulse else "-",
                    _mark(lat["p99"] < 0.005) if pulse else "-", _machine(t)))
        out.append((f"{what}: daemon peak memory (VmHWM)", f"{sm['daemon_peak_rss_bytes'] / 2**20:.0f} MB",
                    "< 500 MB", _mark(sm["daemon_peak_rss_bytes"] < 500 * 2**20), _machine(t)))
        for r in t.get("rows", []):  # the yardstick rows of issue 16 (benchmarks/throughput.py)
            met = r.get("met")
            out.append((r["benchmark"], r["measured"], r["target"], _mark(met) if met is not None else "-",
                        _machine(t)))
    if (p := _load("physics")) is not None:
        a = p["a50"]
        out.append(("A50 at 1% FPR: VCAE / matched filter",
                    f"{a['vcae']['a50']:.4f} / {a['matched_filter']['a50']:.4f} = "
                    f"{p['ratio_vcae_to_matched_filter']:.3f} (peak threshold {a['peak']['a50']:.4f}; "
                    f"model {p['model']['name']} {p['model']['sha256'][:8]})",
                    "<= 1.1", _mark(p["ratio_vcae_to_matched_filter"] <= 1.1), _machine(p)))
        f = p["fpr_actual"]["vcae"]
        out.append(("VCAE false-positive rate on independent noise",
                    f"{100 * f['fpr']:.2f}% [{100 * f['wilson_low']:.2f}, {100 * f['wilson_high']:.2f}] of {f['n']:,}",
                    "1% within statistics", _mark(f["wilson_low"] <= 0.01 <= f["wilson_high"]), _machine(p)))
    for name in ("deadstart", "deadstart_check"):
        if (d := _load(name)) is None:
            continue
        st = d["settings"]
        for setup in ("naive", "fixed"):
            r = d["summary"].get(setup)
            if r is None:
                continue
            fixed = setup == "fixed"
            out.append((f"Dead starts, {setup} ({st['epochs']} epochs, {st['n_train']} waveforms, data seed "
                        f"{st['data_seed']})", f"{r['dead_starts']} of {r['runs']} seeds {r['dead_seeds'] or ''}",
                        "0 of 20" if fixed else "-", _mark(r["dead_starts"] == 0) if fixed else "-",
                        "this machine (run by training/deadstart.py; its JSON has no machine stamp)"
                        if "machine" not in d else _machine(d)))
    if (g := _load("gpu")) is not None:
        targets = {"tensorrt_fp16_model_only": ("GPU: TensorRT FP16 model-only throughput", ">= 1,000,000 waveforms/s"),
                   "end_to_end_over_ingest": ("GPU: end to end / loopback ZeroMQ ingest", ">= 0.8"),
                   "p99_latency_at_batch_le_64": ("GPU: p99 latency at batch <= 64", "< 1 ms")}
        for key, (what, target) in targets.items():
            t = g["targets"].get(key, {})
            status = {"met": "met", "missed": "**missed**"}.get(t.get("status"), "not run")
            measured = t.get("measured") or t.get("reason", "")
            out.append((what, str(measured)[:160], target, status, _machine(g)))
    if (o := _load("own_detector")) is not None:  # bring your own detector (benchmarks/own_detector.py, issue 14)
        for r in o["rows"]:
            out.append((r["benchmark"], r["measured"], r["target"], _mark(r["met"]), _machine(o)))
    # Any other result may carry its own rows: {"rows": [{"benchmark", "measured", "target", "met"}]}
    # ("met": true, false or null for not run).
    for path in sorted(RESULTS.glob("*.json")):
        if path.stem in KNOWN:
            continue
        d = _load(path.stem)
        for r in (d or {}).get("rows", []):
            met = r.get("met")
            status = _mark(met) if met is not None else "-" if r["target"] in ("", "-") else "not run"
            out.append((r["benchmark"], r["measured"], r["target"], status, _machine(d)))
    return out


KNOWN = {"simulator", "sky_simulator", "gpu", "throughput", "throughput_segment", "throughput_denoise", "physics",
         "deadstart", "deadstart_check", "own_detector"}


def table() -> str:
    lines = ["| benchmark | measured | target | status | machine, date, commit |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows()]
    return "\n".join(lines)


def main() -> int:
    text = README.read_text() if README.is_file() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        sys.stderr.write(f"{README} lacks the markers {BEGIN} / {END}\n")
        return 1
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    README.write_text(f"{head}{BEGIN}\n{table()}\n{END}{tail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
