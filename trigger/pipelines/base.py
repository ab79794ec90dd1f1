"""What every pipeline offers the daemon, the registry of pipelines, and how one is built from the
configuration.

Pipelines register under a unique name with :func:`register_pipeline`. The shipped ones are
listed once, in :mod:`trigger.pipelines`, by the module that registers each; a module is imported
only when its pipeline is asked for. Others register when their module is imported, or through
the entry-point group ``trigger.pipelines`` (``name = "package.module"``) of an installed package.
"""

from __future__ import annotations

import importlib
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from ..backends import Backend, BackendUnavailable, backend_class, create_backend, usable_cores
from ..calibration import load_for_model, sha256_file

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..config import Config

logger = logging.getLogger(__name__)

PIPELINE_GROUP = "trigger.pipelines"
_REGISTRY: dict[str, type[Pipeline]] = {}
_MODULES: dict[str, str] = {}  # name -> the module that registers it (filled by trigger/pipelines/__init__.py)


@dataclass(frozen=True)
class PipelineMetric:
    """A Prometheus series of one pipeline's own, created at 0 by :class:`trigger.runtime.metrics.Metrics`
    and reached by :meth:`Pipeline.monitor` as ``metrics.<attr>``.

    Args:
        attr: the attribute of the metrics object, e.g. ``sources_found``.
        kind: counter, gauge, or a histogram fed a whole batch at a time (``observe_many``).
        name: the series name, ``trigger_`` prefix and base units.
        documentation: the help line of the series.
        buckets: upper bounds of a histogram.
        initial: starting value of a gauge (e.g. NaN: "no estimate yet").
    """

    attr: str
    kind: Literal["counter", "gauge", "bulk_histogram"]
    name: str
    documentation: str
    buckets: tuple[float, ...] = ()
    initial: float | None = None


class Pipeline(ABC):
    """Immutable once built: a hot reload builds a new one and swaps the reference."""

    name: ClassVar[str]
    input_kind: ClassVar[str]  # the protocol kind it decides on ("waveform", "image")
    outcome_labels: ClassVar[tuple[str, ...]] = ("decided",)
    """The labels :meth:`outcomes` counts; trigger_decisions_total has each at 0 from the start."""
    own_metrics: ClassVar[tuple[PipelineMetric, ...]] = ()
    """The pipeline's own series, which :meth:`monitor` updates."""
    backend: Backend | None = None
    """The backend running the model, if any; closed when a reload retires the pipeline."""
    threshold: float | None = None
    """The working point's threshold (``trigger_threshold``), for a pipeline that has one."""
    working_point: str | None = None
    """The working point's name (``fpr_0.01``: ``trigger_working_point_false_positive_rate``), if any."""
    preferred_backends: ClassVar[tuple[str, ...]] = ("onnxruntime",)
    """The backends ``backend.name: auto`` tries, in order: the first that computes the model here runs it."""

    @classmethod
    @abstractmethod
    def from_config(cls, config: Config) -> Pipeline:
        """Build the pipeline from the daemon configuration (model, calibration, working point).

        Args:
            config: the daemon configuration.
        """

    @property
    @abstractmethod
    def event_shape(self) -> tuple[int, ...]:
        """Shape of one event the model takes (samples, or height x width)."""

    @abstractmethod
    def decide(self, batch: np.ndarray, noise: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Per-event decision arrays for ``batch`` float32 ``[n, *event_shape]`` (row i = event i).

        Args:
            batch: the events.
            noise: bool ``[n]``, the events of noise-only sources (``pipeline.noise_sources``), or None;
                a pipeline that monitors its noise reads those (the pulse pipeline).
        """

    @property
    def reads_messages(self) -> bool:
        """Whether :meth:`decide_parts` decides the messages' own arrays (no batch is assembled)."""
        return False

    def decide_parts(self, parts: list[np.ndarray], pedestal: float, gain: float,
                     noise: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """What :meth:`decide` gives on the batch the messages ``parts`` would assemble into
        (integer ADC data as ``(adc - pedestal) * gain``), for a pipeline that :attr:`reads_messages`.

        Args:
            parts: the messages' ``[n_i, *event_shape]`` arrays, in batch order.
            pedestal: subtracted from integer ADC data.
            gain: multiplies integer ADC data after the pedestal.
            noise: as for :meth:`decide`.
        """
        raise NotImplementedError(f"the {self.name} pipeline decides assembled batches only")

    @abstractmethod
    def header(self) -> dict[str, Any]:
        """Keys every decision message of this pipeline carries (pipeline, model, ...)."""

    def split(self, result: dict[str, np.ndarray], start: int, stop: int) -> dict[str, np.ndarray]:
        """The decision arrays of events ``start:stop`` of a batch, as published. Per-event arrays whose
        name starts with ``_`` are the pipeline's own, for :meth:`monitor`, and never published."""
        return {k: v[start:stop] for k, v in result.items() if not k.startswith("_")}

    def merge(self, parts: list[dict[str, np.ndarray]], sizes: list[int]) -> dict[str, np.ndarray]:
        """One result from the results of consecutive slices of ``sizes`` events (inverse of split)."""
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def outcomes(self, result: dict[str, np.ndarray]) -> dict[str, int]:
        """Count of events per outcome label (for the decisions counter)."""
        return {"decided": len(next(iter(result.values())))}

    def truth_outcomes(self, result: dict[str, np.ndarray], truth: np.ndarray) -> dict[tuple[str, str], int]:
        """Events per (truth, outcome) cell, ``truth`` "signal" or "noise", for trigger_truth_events_total.

        Empty (the default) for a pipeline without a per-event accept/reject decision.

        Args:
            result: the decision arrays of one message.
            truth: bool [n], the message's simulation truth (``meta.truth.is_signal``).
        """
        return {}

    @property
    def concurrent(self) -> bool:
        """Whether several inference workers may call :meth:`decide` at once (its backend allows it)."""
        return self.backend is not None and self.backend.concurrent

    def describe(self) -> dict[str, str]:
        """What decides, for the ``trigger_model`` info metric and the ready line."""
        return {"pipeline": self.name}

    def monitor(self, result: dict[str, np.ndarray], metrics: Any) -> None:  # noqa: B027 - optional hook
        """Update the pipeline's own quality metrics from a batch's decisions (inference thread)."""

    def idle(self, metrics: Any, busy: Callable[[], bool] | None = None) -> None:  # noqa: B027 - optional hook
        """Do the monitoring work put off to keep batches fast, while nothing is queued.

        An inference thread calls it about every 0.1 s while its queue stays empty, so it must return at
        once when there is nothing to do; whatever it does delays the batch that arrives meanwhile, so
        it should stop once ``busy()`` is true. Another worker may be in :meth:`monitor` at the same time,
        and a reload may just have swapped this pipeline out.

        Args:
            metrics: the daemon's series, as for :meth:`monitor`.
            busy: true when events are waiting (None: never).
        """


def model_header(backend: Backend, calibration: Any, calibration_path: str | Path | None = None) -> dict[str, str]:
    """The decision header's ``model`` map: the model file and the calibration, each by content hash
    (the calibration's file name rides along for people). The calibration must come from a file
    (``calibration_path``, or the one it was loaded from), whose sha256 names it in every decision.

    Args:
        backend: the backend running the model file.
        calibration: the model's calibration (any kind with ``model_sha256`` and ``source_file``).
        calibration_path: the calibration file; default: the one the calibration was loaded from.
    """
    path = calibration_path or calibration.source_file
    if path is None:
        raise ValueError("the calibration was not loaded from a file: pass calibration_path, whose sha256 names "
                         "the calibration in every decision")
    cal_path = Path(path)
    return {"name": backend.model_path.name, "sha256": calibration.model_sha256, "calibration": sha256_file(cal_path),
            "calibration_name": cal_path.name}


def model_description(backend: Backend, header: dict[str, Any], **extra: str) -> dict[str, str]:
    """What ``describe()`` reports for a pipeline built on one model file and its calibration.

    Args:
        backend: the backend running the model.
        header: the pipeline's decision header (with the ``model`` map of :func:`model_header`).
        **extra: further entries, e.g. the working point.
    """
    model = header["model"]
    return {"pipeline": header["pipeline"], "model": model["name"], "model_sha256": model["sha256"][:16],
            "calibration_sha256": model["calibration"][:16], **extra, **backend.describe()}


def open_model(config: Config, calibration_kind: type,
               preferred: tuple[str, ...] = ("onnxruntime",)) -> tuple[Backend, Any]:
    """The configured model's backend and its calibration (checked to belong to that model file).

    Args:
        config: the daemon configuration (model, calibration, backend, batching).
        calibration_kind: the pipeline's calibration class, e.g. ``PulseCalibration``.
        preferred: the pipeline's :attr:`Pipeline.preferred_backends`, tried in order when
            ``backend.name`` is ``auto``.
    """
    names = backend_candidates(config, preferred)
    threads = backend_threads(config, names)  # refuses workers the backend cannot take, before loading anything
    model = config.model_path()
    if not Path(model).is_file():
        raise BackendUnavailable(f"model file {model} does not exist")
    calibration = load_for_model(model, config.pipeline.calibration, calibration_kind)
    backend = create_first(names, model, threads=threads, options=config.backend.options,
                           auto=config.backend.name == "auto")
    return backend, calibration


def create_first(names: tuple[str, ...], model: str | Path, *, threads: int = 0,
                 options: dict[str, Any] | None = None, auto: bool = True) -> Backend:
    """The first of ``names`` that computes ``model`` here; the daemon's log says which and why
    any before it was passed over.

    Args:
        names: backend names, in order of preference.
        model: the model file.
        threads: intra-op threads (0: the backend's default).
        options: backend options (only with one named backend, ``auto`` False).
        auto: whether ``names`` came from ``backend.name: auto`` (logged as such).
    """
    if not auto:
        return create_backend(names[0], model, threads=threads, **(options or {}))
    refusals = []
    for name in names:
        try:
            backend = create_backend(name, model, threads=threads)
        except BackendUnavailable as exc:
            refusals.append(f"{name}: {exc}")
            continue
        if refusals:  # the choice itself shows in the ready line and trigger_model_info
            logger.info("backend auto: %s (passed over: %s)", name, "; ".join(refusals))
        else:
            logger.debug("backend auto: %s", name)
        return backend
    raise BackendUnavailable(f"backend auto: no backend computes {model} here ({'; '.join(refusals)})")


def backend_candidates(config: Config, preferred: tuple[str, ...]) -> tuple[str, ...]:
    """The backends to try: the configured one, or for ``auto`` the pipeline's preferred ones that
    can take ``batching.workers`` (several workers need a backend that allows concurrent calls).

    Args:
        config: the daemon configuration.
        preferred: the pipeline's preferred backends, in order.
    """
    if config.backend.name != "auto":
        return (config.backend.name,)
    if config.backend.options:
        raise BackendUnavailable(f"backend.options {sorted(config.backend.options)} belong to one backend: "
                                 "name it in backend.name instead of auto")
    names = tuple(n for n in preferred if config.batching.workers == 1 or _concurrent(n))
    if not names:
        raise BackendUnavailable(f"backend auto: none of {', '.join(preferred)} takes batching.workers "
                                 f"{config.batching.workers}; set workers to 1")
    return names


def _concurrent(name: str) -> bool:
    try:
        return backend_class(name).concurrent
    except BackendUnavailable:
        return False


def inference_workers(config: Config, names: tuple[str, ...] | None = None) -> int:
    """``batching.workers``, refused above 1 for a backend whose ``infer`` must not be called from
    several threads at once.

    Args:
        config: the daemon configuration.
        names: the backends that may run the model (default: the configured one).
    """
    workers = config.batching.workers
    for name in names or (config.backend.name,):
        if name != "auto" and workers > 1 and not backend_class(name).concurrent:
            raise BackendUnavailable(f"batching.workers {workers}: the {name} backend takes one batch "
                                     "at a time (it overlaps batches on its own streams); set workers to 1")
    return workers


def backend_threads(config: Config, names: tuple[str, ...] | None = None) -> int:
    """Intra-op threads of the backend: ``backend.threads``, or ``cores - workers + 1``. ONNX
    Runtime gives a session one pool of ``threads - 1`` threads, shared by the calls running at
    once, each of which also computes on its caller's thread: the workers and the pool then fill
    the cores, no more.

    Args:
        config: the daemon configuration.
        names: the backends that may run the model (default: the configured one).
    """
    workers = inference_workers(config, names)  # checked even where threads are set
    return config.backend.threads or max(1, usable_cores() - workers + 1)


def check_io(backend: Backend, event_shape: tuple[int, ...], output: str) -> None:
    """Refuse a model whose input shape or output name is not what its calibration describes.

    Args:
        backend: the backend running the model.
        event_shape: the shape of one event, from the calibration.
        output: the output the pipeline reads, from the calibration.
    """
    if backend.input_shape != tuple(event_shape):
        raise BackendUnavailable(f"model input shape {backend.input_shape} does not match the calibration's "
                                 f"{tuple(event_shape)}")
    if output not in backend.output_names:
        raise BackendUnavailable(f"model has no output {output!r}; it has {backend.output_names}")


def register_pipeline(cls: type[Pipeline]) -> type[Pipeline]:
    """Class decorator: make ``cls`` available under ``cls.name``; a second class of that name is an error.

    Args:
        cls: a :class:`Pipeline` subclass with a non-empty ``name``.
    """
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"pipeline {cls.__qualname__} needs a non-empty class attribute 'name'")
    if not (isinstance(cls, type) and issubclass(cls, Pipeline)):
        raise TypeError(f"pipeline {name!r}: {cls!r} is not a Pipeline subclass")
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ValueError(f"pipeline name {name!r} is already registered by {_REGISTRY[name].__qualname__}")
    _REGISTRY[name] = cls
    return cls


def register_pipeline_module(name: str, module: str) -> None:
    """Name a pipeline whose module registers it, imported on first use.

    Args:
        name: the pipeline's name (``pipeline.name`` in the configuration).
        module: the dotted module that registers it.
    """
    if _MODULES.get(name, module) != module:
        raise ValueError(f"pipeline name {name!r} is already listed for module {_MODULES[name]}")
    _MODULES[name] = module


def _installed() -> dict[str, str]:
    return {ep.name: ep.value.partition(":")[0] for ep in entry_points(group=PIPELINE_GROUP)}


def is_pipeline(name: str) -> bool:
    """Whether ``name`` is a pipeline :func:`pipeline_class` can find (without importing it).

    Args:
        name: the pipeline's name.
    """
    return name in _MODULES or name in _REGISTRY or name in _installed()


def available_pipelines() -> list[str]:
    """Names of every pipeline: listed, registered or installed (entry points), shipped ones first."""
    return list(dict.fromkeys([*_MODULES, *_REGISTRY, *_installed()]))


def pipeline_class(name: str) -> type[Pipeline]:
    """The class registered as ``name``, its module imported on first use; raises ValueError for an
    unknown name and ImportError when the module cannot be imported.

    Args:
        name: the pipeline's name.
    """
    if name not in _REGISTRY:
        module = _MODULES.get(name) or _installed().get(name)
        if module is None:
            raise ValueError(f"unknown pipeline {name!r}; known: {', '.join(available_pipelines())}")
        importlib.import_module(module)
        if name not in _REGISTRY:
            raise ValueError(f"module {module} did not register pipeline {name!r} (@register_pipeline)")
    return _REGISTRY[name]


def load_pipeline(config: Config) -> Pipeline:
    """Build the configured pipeline with its model, backend and calibration.

    Args:
        config: the daemon configuration; ``pipeline.name`` picks the registered class.
    """
    return pipeline_class(config.pipeline.name).from_config(config)
