"""GPU serving: every available backend, model-only and end to end, against the ZeroMQ ingest ceiling.

Measured in one run, on one machine:

1. Model-only, per backend and batch size: events/s and the latency of one ``infer`` call (host
   array in, host array out: the GPU backends synchronise their stream before returning, and the
   clock is read after ``torch.cuda.synchronize``) at p50/p99/p99.9. TensorRT also with two
   batches in flight (``submit``: double buffering across batches) and with the data already on
   the GPU (the engine alone).
2. Host-to-device copy bandwidth from pinned and from pageable memory, when there is CUDA.
3. ZeroMQ loopback ingest: replay (PUSH, pre-simulated pool) -> a PULL socket that decodes every
   message and does nothing else: the most the daemon's input can take here.
4. End to end: replay (PUSH) -> ``trigger serve`` (a real subprocess, the backend set in its config
   file) -> subscriber, sustained with backpressure, nothing lost; then the daemon's receive-to-publish
   latency at half that rate with max_batch 64.

Backends: onnxruntime (CPU), torch (cpu; cuda fp32/fp16), tensorrt (fp32/fp16). One that cannot run
here is recorded as not run, with the reason; one that fails part-way is recorded with its error
(and, end to end, the daemon's last log lines), and the run goes on. The issue's targets (TensorRT
FP16 model-only >= 1e6 waveforms/s at a large batch; end to end >= 80 % of the ingest rate; p99 < 1 ms
at batch <= 64) are evaluated as met / missed / not-run.

Results are written as they come: ``gpu.json`` (``"complete": false`` until the end) after every
backend and section, so a run cut short keeps what it measured. Each daemon's log is read from its
start by a thread (``trigger.testing``) and kept beside the results; a daemon that dies is noticed
within a second, at start or while it serves.

    python benchmarks/gpu.py [--quick] [--backends onnxruntime,tensorrt-fp16] [--cache-dir DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import collections
import importlib
import json
import logging
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import yaml
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine_stamp  # noqa: E402

from trigger.backends import BackendUnavailable, create_backend  # noqa: E402
from trigger.config import DEFAULT_PULSE_MODEL  # noqa: E402
from trigger.protocol import decode  # noqa: E402
from trigger.replay import PoolSource, make_simulation, open_socket, replay, wait_for_subscriber  # noqa: E402
from trigger.testing import DecisionCollector, ServeProcess, free_port, handshake  # noqa: E402

log = logging.getLogger("benchmarks.gpu")

QUANTILES = (50, 99, 99.9)
TARGETS = {
    "tensorrt_fp16_model_only_events_per_second": 1_000_000,
    "end_to_end_over_ingest": 0.8,
    "p99_latency_seconds_at_batch_le_64": 0.001,
}


def gpu_info() -> dict[str, Any] | None:
    """The GPU as torch (or cuda-python) names it; None without CUDA."""
    try:
        import torch

        if torch.cuda.is_available():
            cc = torch.cuda.get_device_capability()
            return {"name": torch.cuda.get_device_name(), "compute_capability": f"{cc[0]}.{cc[1]}",
                    "count": torch.cuda.device_count(), "torch_cuda": torch.version.cuda, "via": "torch"}
    except ImportError:
        pass
    try:
        from trigger.backends.tensorrt.cuda import cuda_runtime

        cuda = cuda_runtime(0, "cuda-python")
        name, cc = cuda.device_info()
        cuda.close()
        return {"name": name, "compute_capability": cc, "via": "cuda-python"}
    except (BackendUnavailable, RuntimeError):
        return None


def sync() -> None:
    """Wait for the GPU (torch's view of it), so a clock read after it covers the work before it."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.synchronize()


def backend_specs(cache_dir: Path, max_batch: int) -> dict[str, tuple[str, dict[str, Any]]]:
    trt = {"min_batch": 1, "opt_batch": min(1024, max_batch), "max_batch": max_batch, "cache_dir": str(cache_dir)}
    return {
        "onnxruntime": ("onnxruntime", {}),
        "torch-cpu": ("torch", {"device": "cpu"}),
        "torch-cuda-fp32": ("torch", {"device": "cuda", "precision": "fp32", "max_batch": max_batch}),
        "torch-cuda-fp16": ("torch", {"device": "cuda", "precision": "fp16", "max_batch": max_batch}),
        "tensorrt-fp32": ("tensorrt", {"precision": "fp32", **trt}),
        "tensorrt-fp16": ("tensorrt", {"precision": "fp16", **trt}),
    }


def percentiles(samples: list[float]) -> dict[str, float]:
    return dict(zip([f"p{q:g}" for q in QUANTILES], np.percentile(samples, QUANTILES).tolist(), strict=True))


def model_only(backend: Any, pool: np.ndarray, batch_sizes: list[int], seconds: float) -> dict[str, Any]:
    """Per batch size: events/s over a timed window of back-to-back calls, and each call's latency."""
    out = {}
    for bs in batch_sizes:
        batch = np.ascontiguousarray(pool[:bs])
        for _ in range(3):
            backend.infer(batch)
        lat: list[float] = []
        sync()
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds or len(lat) < 20:
            t = time.perf_counter()
            backend.infer(batch)
            lat.append(time.perf_counter() - t)
        sync()
        elapsed = time.perf_counter() - t0
        out[str(bs)] = {"events_per_second": len(lat) * bs / elapsed, "calls": len(lat),
                        "latency_seconds": percentiles(lat)}
        log.info("  batch %6d: %10.0f events/s, p50 %.3f ms, p99 %.3f ms", bs, out[str(bs)]["events_per_second"],
                 out[str(bs)]["latency_seconds"]["p50"] * 1e3, out[str(bs)]["latency_seconds"]["p99"] * 1e3)
    return out


def tensorrt_extras(backend: Any, pool: np.ndarray, batch_sizes: list[int], seconds: float) -> dict[str, Any]:
    """TensorRT only: two batches in flight (submit), and the engine alone on data already on the GPU."""
    pipelined, compute = {}, {}
    for bs in batch_sizes:
        batch = np.ascontiguousarray(pool[:bs])
        inflight: collections.deque = collections.deque()
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds or n < 20:
            inflight.append(backend.submit(batch))
            if len(inflight) == 2:
                inflight.popleft().result()
            n += 1
        while inflight:
            inflight.popleft().result()
        pipelined[str(bs)] = n * bs / (time.perf_counter() - t0)
        per_batch = backend.time_compute(bs, repeats=50)
        compute[str(bs)] = bs / per_batch
        log.info("  batch %6d: pipelined %10.0f events/s; engine alone %10.0f events/s", bs, pipelined[str(bs)],
                 compute[str(bs)])
    return {"pipelined_events_per_second": pipelined, "engine_only_events_per_second": compute}


def copy_bandwidth(nbytes: int = 256 << 20, repeats: int = 10) -> dict[str, Any]:
    """Host-to-device bytes/s from pinned and from pageable host memory (torch, synchronised)."""
    import torch

    dev = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    out = {"bytes": nbytes}
    for kind, host in (("pinned", torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)),
                       ("pageable", torch.empty(nbytes, dtype=torch.uint8))):
        dev.copy_(host, non_blocking=True)
        sync()
        t0 = time.perf_counter()
        for _ in range(repeats):
            dev.copy_(host, non_blocking=True)
        sync()
        out[f"{kind}_bytes_per_second"] = nbytes * repeats / (time.perf_counter() - t0)
        log.info("host -> device from %s memory: %.1f GB/s", kind, out[f"{kind}_bytes_per_second"] / 1e9)
    return out


def ingest_rate(ctx: zmq.Context, source: PoolSource, events: int, per_message: int) -> dict[str, Any]:
    """Events/s that replay -> ZeroMQ (tcp loopback) -> decode sustains, with nothing else running."""
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.RCVHWM, 64)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    got = {"events": 0, "messages": 0}

    def receive() -> None:
        while got["events"] < events:
            if not pull.poll(10_000):
                return
            msg = decode(pull.recv_multipart(copy=False))
            got["events"] += len(msg.arrays["data"])
            got["messages"] += 1

    thread = threading.Thread(target=receive, daemon=True)
    thread.start()
    push = open_socket(ctx, f"tcp://127.0.0.1:{port}", "push", connect=True, hwm=64)
    t0 = time.perf_counter()
    replay(push, source, sources=["adc00"], events=events, rate=0, events_per_message=per_message, truth=False)
    thread.join(timeout=60)
    elapsed = time.perf_counter() - t0
    push.close(linger=0)
    pull.close(linger=0)
    rate = got["events"] / elapsed
    log.info("ZeroMQ loopback ingest (replay -> PULL + decode): %.0f events/s (%.2f GB/s), %d of %d events", rate,
             rate * source.data[0].nbytes / 1e9, got["events"], events)
    return {"events_per_second": rate, "bytes_per_second": rate * source.data[0].nbytes, "events": got["events"],
            "events_per_message": per_message, "seconds": elapsed}


class DaemonDied(RuntimeError):
    """The daemon under test exited; the message holds its last log lines."""


class Daemon:
    """``trigger serve`` (:class:`trigger.testing.ServeProcess`) with the backend and batching from a
    config file; ready once it logged its ready line (after loading the model, a TensorRT build
    included), failing at once if it exits first. Its log is read from the start by a thread and
    written to ``log_dir`` when it stops."""

    def __init__(self, model: Path, in_ep: str, pattern: str, backend: str, options: dict[str, Any],
                 max_batch: int, max_delay_ms: float, workdir: Path, log_dir: Path, tag: str):
        self.out_ep = f"tcp://127.0.0.1:{free_port()}"
        cfg = {"backend": {"name": backend, "options": options},
               "batching": {"max_batch": max_batch, "max_delay_ms": max_delay_ms}}
        path = workdir / f"daemon-{tag}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        self.log_file = log_dir / f"daemon-{tag}.log"
        try:
            self.proc = ServeProcess("--config", str(path), "--model", str(model), "--input", in_ep,
                                     "--output", self.out_ep, "--input-pattern", pattern, "--metrics-port", "0",
                                     startup_timeout=900)  # a first TensorRT build takes minutes
        except RuntimeError as exc:
            self.log_file.write_text(str(exc) + "\n")
            raise DaemonDied(str(exc)) from exc

    def check(self) -> None:
        """Raise DaemonDied if the daemon has exited."""
        if not self.proc.alive:
            raise DaemonDied(f"the daemon exited with {self.proc.proc.returncode}:\n{self.proc.text(40)}")

    def stop(self) -> int:
        try:
            code = self.proc.stop(timeout=120)
        except Exception:  # noqa: BLE001 - a daemon that does not drain in time is killed, its log kept
            self.proc.close()
            code = -9
        self.log_file.write_text(self.proc.text())
        if code != 0:
            log.error("daemon exited with %s; last lines:\n%s", code, self.proc.text(20))
        return code


def handshake_alive(sock: zmq.Socket, collector: DecisionCollector, shape: tuple[int, ...], daemon: Daemon,
                    timeout: float = 120.0) -> None:
    """:func:`trigger.testing.handshake`, checking every second that the daemon still runs."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            handshake(sock, collector, shape, timeout=1.0)
            return
        except TimeoutError:
            daemon.check()
            if time.monotonic() > deadline:
                raise


def wait_decided(collector: DecisionCollector, total: int, daemon: Daemon, seconds: float) -> None:
    """Until ``total`` events are decided, ``seconds`` pass, or the daemon dies."""
    deadline, next_check = time.monotonic() + seconds, 0.0
    while collector.events() < total and time.monotonic() < deadline:
        if time.monotonic() > next_check:
            daemon.check()
            next_check = time.monotonic() + 1.0
        time.sleep(0.002)


def end_to_end(ctx, model, source, backend, options, *, events, max_batch, per_message, workdir,
               log_dir) -> dict[str, Any]:
    sock = open_socket(ctx, "tcp://127.0.0.1:*", "push", hwm=64)
    collector = None
    try:
        daemon = Daemon(model, sock.getsockopt(zmq.LAST_ENDPOINT).decode(), "pull", backend, options, max_batch, 0.5,
                        workdir, log_dir, f"{backend}-{max_batch}-e2e")
    except BaseException:
        sock.close(linger=0)
        raise
    try:
        collector = DecisionCollector(ctx, daemon.out_ep)
        collector.start()
        handshake_alive(sock, collector, source.data.shape[1:], daemon)
        t0 = time.monotonic()
        # replay blocks while the daemon holds its input back (PUSH backpressure): a send that waits
        # 30 s means a dead or stuck daemon, not backpressure
        sock.setsockopt(zmq.SNDTIMEO, 30_000)
        try:
            stats = replay(sock, source, sources=["adc00"], events=events, rate=0, events_per_message=per_message,
                           truth=False)
        except zmq.Again:
            daemon.check()
            raise TimeoutError("replay could not send for 30 s: the daemon takes no input") from None
        wait_decided(collector, stats.total_events, daemon, 300)
        elapsed = time.monotonic() - t0
        decided = collector.events()
    finally:
        if collector is not None:
            collector.stop()
        sock.close(linger=0)
        code = daemon.stop()
    rate = decided / elapsed
    log.info("  end to end, max_batch %5d: %9.0f events/s (%d of %d decided)", max_batch, rate, decided,
             stats.total_events)
    return {"max_batch": max_batch, "events_per_message": per_message, "events_sent": stats.total_events,
            "events_decided": decided, "lost": stats.total_events - decided, "seconds": elapsed,
            "events_per_second": rate, "daemon_exit": code}


def latency_at(ctx, model, source, backend, options, *, rate, seconds, max_batch, per_message, workdir,
               log_dir) -> dict:
    sock = open_socket(ctx, "tcp://127.0.0.1:*", "pub", hwm=1000)
    collector = None
    try:
        daemon = Daemon(model, sock.getsockopt(zmq.LAST_ENDPOINT).decode(), "sub", backend, options, max_batch, 0.1,
                        workdir, log_dir, f"{backend}-{max_batch}-latency")
    except BaseException:
        sock.close(linger=0)
        raise
    try:
        collector = DecisionCollector(ctx, daemon.out_ep)
        collector.start()
        if not wait_for_subscriber(sock, 60):
            daemon.check()
            raise RuntimeError("the daemon never subscribed")
        handshake_alive(sock, collector, source.data.shape[1:], daemon)
        stats = replay(sock, source, sources=["adc00"], events=int(rate * seconds), rate=rate,
                       events_per_message=per_message, truth=False)
        wait_decided(collector, stats.total_events, daemon, 30)
    finally:
        got = collector.stop() if collector is not None else None
        sock.close(linger=0)
        daemon.stop()
    res = {"rate": rate, "max_batch": max_batch, "events_per_message": per_message, "events_sent": stats.total_events,
           "events_decided": got.events, "latency_seconds": percentiles(got.daemon_latency),
           "end_to_end_latency_seconds": percentiles(got.e2e_latency)}
    log.info("  latency at %.0f events/s, max_batch %d: p50 %.3f ms, p99 %.3f ms, p99.9 %.3f ms", rate, max_batch,
             *(res["latency_seconds"][k] * 1e3 for k in ("p50", "p99", "p99.9")))
    return res


def evaluate_targets(result: dict[str, Any]) -> dict[str, Any]:
    """Each issue target: met / missed / not-run, with the number and where it came from."""
    mo, e2e, ingest = result["model_only"], result["end_to_end"], result["ingest"]["events_per_second"]
    gpu_order = ["tensorrt-fp16", "tensorrt-fp32", "torch-cuda-fp16", "torch-cuda-fp32"]
    out: dict[str, Any] = {}

    trt16 = mo.get("tensorrt-fp16", {})
    if trt16.get("status") == "run":
        large = max(map(int, trt16["batches"]))
        value = max(trt16["batches"][str(large)]["events_per_second"],
                    trt16.get("pipelined_events_per_second", {}).get(str(large), 0.0))
        out["tensorrt_fp16_model_only"] = {
            "status": "met" if value >= TARGETS["tensorrt_fp16_model_only_events_per_second"] else "missed",
            "value_events_per_second": value, "batch": large,
            "target_events_per_second": TARGETS["tensorrt_fp16_model_only_events_per_second"],
            "engine_only_events_per_second": trt16.get("engine_only_events_per_second", {}).get(str(large)),
            "definition": "host in, host out (pinned staging, H2D, engine, D2H), best of back-to-back infer and two "
                          "batches in flight, at the largest batch measured"}
    else:
        out["tensorrt_fp16_model_only"] = {"status": "not-run", "reason": trt16.get("reason", "not measured")}

    gpu_e2e = next((b for b in gpu_order if e2e.get(b, {}).get("status") == "run"), None)
    if gpu_e2e:
        best = max(r["events_per_second"] for r in e2e[gpu_e2e]["runs"])
        out["end_to_end_over_ingest"] = {
            "status": "met" if best >= TARGETS["end_to_end_over_ingest"] * ingest else "missed", "backend": gpu_e2e,
            "value": best / ingest, "end_to_end_events_per_second": best, "ingest_events_per_second": ingest,
            "target": TARGETS["end_to_end_over_ingest"]}
    else:
        out["end_to_end_over_ingest"] = {"status": "not-run", "reason": "no GPU backend ran end to end here"}

    gpu_mo = next((b for b in gpu_order if mo.get(b, {}).get("status") == "run"), None)
    if gpu_mo:
        small = {bs: r["latency_seconds"]["p99"] for bs, r in mo[gpu_mo]["batches"].items() if int(bs) <= 64}
        worst = max(small.values()) if small else None
        out["p99_latency_at_batch_le_64"] = {
            "status": "not-run" if worst is None else
            ("met" if worst < TARGETS["p99_latency_seconds_at_batch_le_64"] else "missed"),
            "backend": gpu_mo, "p99_seconds_by_batch": small, "worst_p99_seconds": worst,
            "target_seconds": TARGETS["p99_latency_seconds_at_batch_le_64"],
            "definition": "model-only: one infer call, host in to host out, synchronised"}
    else:
        out["p99_latency_at_batch_le_64"] = {"status": "not-run", "reason": "no GPU backend ran here"}

    cpu = {b: e2e[b] for b in ("onnxruntime", "torch-cpu") if e2e.get(b, {}).get("status") == "run"}
    out["cpu_reference"] = {"status": "info", "end_to_end_over_ingest": {
        b: max(r["events_per_second"] for r in v["runs"]) / ingest for b, v in cpu.items()}}
    return out


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b, c) = plt.subplots(1, 3, figsize=(16, 4.6))
    for name, r in result["model_only"].items():
        if r.get("status") != "run":
            continue
        bs = sorted(map(int, r["batches"]))
        a.plot(bs, [r["batches"][str(x)]["events_per_second"] for x in bs], "o-", label=name)
        b.plot(bs, [r["batches"][str(x)]["latency_seconds"]["p99"] * 1e3 for x in bs], "o-", label=f"{name} p99")
        if "pipelined_events_per_second" in r:
            a.plot(bs, [r["pipelined_events_per_second"][str(x)] for x in bs], "x--", label=f"{name}, 2 in flight")
    ingest = result["ingest"]["events_per_second"]
    a.axhline(ingest, color="grey", ls=":", label="ZeroMQ loopback ingest")
    a.axhline(TARGETS["tensorrt_fp16_model_only_events_per_second"], color="red", ls=":", lw=0.8,
              label="target (TensorRT FP16)")
    b.axhline(1.0, color="red", ls=":", lw=0.8, label="target p99 (batch <= 64)")
    for ax, title, ylabel in ((a, "Model only: throughput", "events / s"), (b, "Model only: latency of one call",
                                                                            "p99 (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size (events)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    names, rates = [], []
    for name, r in result["end_to_end"].items():
        if r.get("status") == "run":
            names.append(name)
            rates.append(max(x["events_per_second"] for x in r["runs"]))
    c.bar(names, rates, color="C0")
    c.axhline(ingest, color="grey", ls=":", label="ingest")
    c.axhline(0.8 * ingest, color="red", ls=":", lw=0.8, label="80 % of ingest (target)")
    c.set_ylabel("events / s")
    c.set_title("End to end (replay -> daemon -> subscriber)")
    c.tick_params(axis="x", rotation=20)
    c.legend(fontsize=7)
    m = result["machine"]
    gpu = (m.get("gpu") or {}).get("name", "no GPU")
    fig.suptitle(f"pulse pipeline: {m['cpu']} ({m['cores']} cores), {gpu}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def save(out: Path, result: dict[str, Any], *, complete: bool) -> Path:
    """Write ``out/gpu.json`` now (atomically: a reader sees the previous file or this one)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "gpu.json"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"benchmark": "gpu", "complete": complete, **result}, indent=2, default=str) + "\n")
    tmp.replace(path)
    return path


def _error(exc: BaseException) -> dict[str, Any]:
    return {"status": "error", "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exception(exc)[-3:]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=DEFAULT_PULSE_MODEL)
    p.add_argument("--quick", action="store_true", help="short runs, small batches (a smoke test; runs on a CPU)")
    p.add_argument("--backends", help="comma-separated subset of " + ", ".join(backend_specs(Path("."), 1)))
    p.add_argument("--cache-dir", type=Path, help="TensorRT engine cache (default: a folder under the system temp)")
    p.add_argument("--per-message", type=int, default=64, help="events per message")
    p.add_argument("--out", type=Path, default=RESULTS, help="where gpu.json, gpu.png and the daemon logs go")
    p.add_argument("--seconds", type=float, help="timed window per model-only batch size (default 3; quick 0.5)")
    p.add_argument("--batch-sizes", help="comma-separated model-only batch sizes")
    p.add_argument("--events", type=int, help="events per end-to-end run (default 200000; quick 4096)")
    p.add_argument("--e2e-batches", help="comma-separated daemon max_batch values end to end (default 64,256,1024)")
    p.add_argument("--e2e-backends", help="comma-separated subset of --backends to run end to end (default: all run)")
    p.add_argument("--latency-seconds", type=float, help="length of the half-load latency run (default 10; quick 2)")
    p.add_argument("--cpu-max-batch", type=int, default=1024,
                   help="largest model-only batch for CPU backends (a batch of 16384 waveforms is 640 MB)")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    quick = a.quick
    batch_sizes = ([int(b) for b in a.batch_sizes.split(",")] if a.batch_sizes else
                   [1, 8, 64, 256] if quick else [1, 8, 32, 64, 256, 1024, 4096, 16384])
    max_batch = max(batch_sizes)
    seconds = a.seconds or (0.5 if quick else 3.0)
    cache_dir = a.cache_dir or Path(tempfile.gettempdir()) / "trigger-bench-engines"
    specs = backend_specs(cache_dir, max_batch)
    chosen = a.backends.split(",") if a.backends else list(specs)
    unknown = set(chosen) - set(specs)
    if unknown:
        p.error(f"unknown backends {sorted(unknown)}")
    out = a.out
    log_dir = out / "gpu-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    sim = make_simulation("waveform", seed=2024, signal_fraction=0.5)
    source = PoolSource(sim, 512 if quick else 4096)
    repeats = -(-max_batch // len(source.data))
    pool = source.data if repeats == 1 else np.tile(source.data, (repeats, 1))
    gpu = gpu_info()
    result: dict[str, Any] = {"model": a.model.name, "quick": quick, "batch_sizes": batch_sizes,
                              "seconds_per_batch_size": seconds,
                              "machine": {**machine_stamp(), "gpu": gpu, "torch": _version("torch"),
                                          "tensorrt": _module_version("tensorrt"),
                                          "cuda_python": _version("cuda-python") or _version("cuda-bindings")},
                              "model_only": {}, "end_to_end": {}}
    save(out, result, complete=False)
    available: dict[str, tuple[str, dict[str, Any]]] = {}
    for name in chosen:
        backend_name, options = specs[name]
        log.info("model only: %s", name)
        try:
            backend = create_backend(backend_name, a.model, **options)
        except BackendUnavailable as exc:
            log.info("  not run: %s", exc)
            result["model_only"][name] = {"status": "not-run", "reason": str(exc)}
            result["end_to_end"][name] = {"status": "not-run", "reason": str(exc)}
            save(out, result, complete=False)
            continue
        except Exception as exc:  # noqa: BLE001 - recorded; the other backends still run
            log.exception("  failed to start")
            result["model_only"][name] = result["end_to_end"][name] = _error(exc)
            save(out, result, complete=False)
            continue
        try:
            on_cpu = backend.describe().get("device") == "cpu"
            sizes = [b for b in batch_sizes if not on_cpu or b <= a.cpu_max_batch]
            entry = {"status": "run", "describe": backend.describe(),
                     "batches": model_only(backend, pool, sizes, seconds)}
            if backend_name == "tensorrt":
                entry.update(tensorrt_extras(backend, pool, batch_sizes, seconds))
            available[name] = (backend_name, options)
        except Exception as exc:  # noqa: BLE001 - recorded; the other backends still run
            log.exception("  failed")
            entry = _error(exc)
        finally:
            backend.close()
        result["model_only"][name] = entry
        save(out, result, complete=False)
    try:
        result["host_to_device"] = (copy_bandwidth(64 << 20 if quick else 1 << 30) if gpu and _has_torch_cuda()
                                    else {"status": "not-run", "reason": "no CUDA device visible to torch"})
    except Exception as exc:  # noqa: BLE001
        result["host_to_device"] = _error(exc)
    ctx = zmq.Context()
    n_events = a.events or (4096 if quick else 200_000)
    result["ingest"] = ingest_rate(ctx, source, n_events, a.per_message)
    save(out, result, complete=False)
    e2e_batches = ([int(b) for b in a.e2e_batches.split(",")] if a.e2e_batches else [256] if quick
                   else [64, 256, 1024])
    e2e_names = [n for n in available if not a.e2e_backends or n in a.e2e_backends.split(",")]
    for name in available:
        if name not in e2e_names:
            result["end_to_end"][name] = {"status": "not-run", "reason": "not chosen for end to end (--e2e-backends)"}
    with tempfile.TemporaryDirectory() as workdir:
        for name in e2e_names:
            backend_name, options = available[name]
            log.info("end to end: %s", name)
            entry: dict[str, Any] = {"status": "run", "runs": []}
            try:
                for mb in e2e_batches:
                    entry["runs"].append(end_to_end(ctx, a.model, source, backend_name, options, events=n_events,
                                                    max_batch=mb, per_message=a.per_message, workdir=Path(workdir),
                                                    log_dir=log_dir))
                    result["end_to_end"][name] = entry
                    save(out, result, complete=False)
                best = max(r["events_per_second"] for r in entry["runs"])
                entry["over_ingest"] = best / result["ingest"]["events_per_second"]
                entry["latency_half_load_max_batch_64"] = latency_at(
                    ctx, a.model, source, backend_name, options, rate=0.5 * best,
                    seconds=a.latency_seconds or (2 if quick else 10), max_batch=64, per_message=16,
                    workdir=Path(workdir), log_dir=log_dir)
            except Exception as exc:  # noqa: BLE001 - the model-only figures and other backends are kept
                log.error("  end to end %s failed: %s", name, exc)
                entry = {**entry, **_error(exc)} if entry["runs"] else _error(exc)
            result["end_to_end"][name] = entry
            save(out, result, complete=False)
    ctx.term()
    result["targets"] = evaluate_targets(result)
    path = save(out, result, complete=True)
    try:
        plot(result, out / "gpu.png")
    except Exception as exc:  # noqa: BLE001 - the figures are in the JSON already
        log.error("plot failed: %s", exc)
    for name, t in result["targets"].items():
        log.info("target %s: %s", name, {k: v for k, v in t.items() if k not in ("definition",)})
    log.info("wrote %s and %s", path, out / "gpu.png")
    return 0


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _module_version(module: str) -> str | None:
    """``module.__version__`` (TensorRT's distribution is tensorrt-cu12/-cu13, its module ``tensorrt``)."""
    try:
        return str(importlib.import_module(module).__version__)
    except Exception:  # noqa: BLE001 - absent, or a wheel whose libraries cannot load
        return None


def _has_torch_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


if __name__ == "__main__":
    sys.exit(main())
