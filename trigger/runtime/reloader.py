"""Hot reload: the reloader thread builds a new pipeline, the inference workers swap it in.

It holds the pipeline in use and its configuration. On :meth:`Reloader.request` (SIGHUP) its
thread re-reads the configuration and builds a new pipeline off the hot path; a worker swaps it in
between two batches (:meth:`Reloader.swap_if_pending`). A failed reload keeps the running
pipeline. A swapped-out pipeline's backend is closed once no batch can use it any more.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from .._log import logger
from ..config import Config
from ..pipelines import Pipeline, load_pipeline
from .metrics import Metrics

RESTART_ONLY = ("input", "output", "metrics", "batching", "log_level")


class Reloader:
    """The pipeline in use, and its replacement.

    Args:
        config: the daemon configuration.
        pipeline: the pipeline built from it.
        metrics: the daemon's series (model info, threshold, reloads).
        reload_config: gives the configuration a reload applies; None: the same one (re-reading
            the model and calibration files).
        stop: set when the daemon stops; the thread then ends.
    """

    def __init__(self, config: Config, pipeline: Pipeline, metrics: Metrics,
                 reload_config: Callable[[], Config] | None, stop: threading.Event):
        self.config = config
        self.pipeline = pipeline
        self.metrics = metrics
        self._reload_config = reload_config
        self._stop = stop
        self._wanted = threading.Event()
        self._lock = threading.Lock()
        self.pending: tuple[Pipeline, Config] | None = None
        # Swapped-out pipelines, each with the first batch ticket that cannot use it (None until
        # taken); its backend is closed once that ticket's turn comes (every earlier batch is done).
        self._retired: list[list[Any]] = []
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="reloader", daemon=True)
        self._thread.start()

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout=timeout)

    def request(self) -> None:
        """Reload model and calibration off the hot path; safe to call from a signal handler."""
        self._wanted.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            if not self._wanted.wait(0.2):
                continue
            self._wanted.clear()
            try:
                self.prepare()
            except Exception as exc:  # noqa: BLE001 - any failure keeps the running pipeline
                logger.error("reload failed, keeping model %s: %s", self.pipeline.describe().get("model"),
                             str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
                self.metrics.reloads.labels("error").inc()  # after the line: who sees the count finds it logged

    def prepare(self) -> None:
        """Build the new pipeline (reloader thread); raises when it cannot replace the running one."""
        cfg = self._reload_config() if self._reload_config is not None else self.config
        restart_only = [k for k in RESTART_ONLY if getattr(cfg, k) != getattr(self.config, k)]
        if restart_only:
            logger.warning("reload applies pipeline and backend only; changes to %s need a restart",
                           ", ".join(restart_only))
        # The running daemon's batching (its worker count sizes the backend's threads), the new
        # pipeline and backend sections.
        config = self.config.model_copy(update={"pipeline": cfg.pipeline, "backend": cfg.backend})
        new = load_pipeline(config)
        old = self.pipeline
        if new.name != old.name or new.event_shape != old.event_shape:
            raise ValueError(f"the new {new.name} pipeline takes events of shape {list(new.event_shape)}, the "
                             f"running {old.name} pipeline {list(old.event_shape)}: that needs a restart")
        with self._lock:
            self.pending = (new, config)

    def swap_if_pending(self) -> None:
        """Put a prepared pipeline in place (a worker, between two batches, under the batch lock)."""
        if self.pending is None:
            return
        with self._lock:
            new, config = self.pending
            self.pending = None
        old = self.pipeline
        self.pipeline = new
        self.config = config
        self.metrics.show_pipeline(new, len(config.pipeline.noise_sources))
        self.metrics.reloads.labels("ok").inc()
        d = new.describe()
        logger.info("reloaded: model %s (sha256 %s), calibration %s, %s %s%s", d.get("model"),
                    d.get("model_sha256"), d.get("calibration_sha256"), d.get("working_point"), d.get("threshold"),
                    noise_sources_text(config))
        with self._lock:
            self._retired.append([old, None])

    def first_ticket(self, ticket: int) -> None:
        """Batch ``ticket`` is the first formed since the last swap, if one has no ticket yet (under the batch lock)."""
        if self._retired:
            with self._lock:
                for r in self._retired:
                    r[1] = ticket if r[1] is None else r[1]

    def close_retired(self, ticket: int | None) -> None:
        """Close the backends of swapped-out pipelines that no batch can use any more.

        A batch that took the old pipeline holds an earlier ticket than the first batch after the
        swap, so once ``ticket`` (at or past that one) has its turn, all of them are done; ``None``
        (the run has ended) closes every one, and a prepared pipeline that was never swapped in.
        GPU backends hold pinned and device memory, contexts and graphs until closed.

        Args:
            ticket: the batch whose turn it is; None at the end of the run.
        """
        if ticket is not None and not self._retired:
            return
        with self._lock:
            done, keep = [], []
            for r in self._retired:
                (done if ticket is None or (r[1] is not None and r[1] <= ticket) else keep).append(r)
            self._retired = keep
            if ticket is None and self.pending is not None:
                done.append([self.pending[0], None])
                self.pending = None
        for pipeline, _ in done:
            backend = pipeline.backend
            if backend is None:
                continue
            try:
                backend.close()
            except Exception as exc:  # noqa: BLE001 - a failed release must not stop the daemon
                logger.warning("closing the replaced %s backend failed: %s", backend.name, exc)


def noise_sources_text(config: Config) -> str:
    """``, noise sources a, b`` when the configuration names random-trigger sources, else empty."""
    names = config.pipeline.noise_sources
    return f", noise sources {', '.join(names)}" if names else ""
