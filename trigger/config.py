"""Daemon configuration: typed models that reject unknown keys, loaded from YAML, overridden by the CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .pipelines import available_pipelines, is_pipeline
from .protocol import SOURCE_RE, topic_for

PACKAGE_MODELS = Path(__file__).parent / "models"
DEFAULT_PULSE_MODEL = PACKAGE_MODELS / "pulse_default.onnx"


class ConfigError(ValueError):
    """The configuration is unusable; the message names the key and the file."""


class _Model(BaseModel):
    # Attribute docstrings become field descriptions: `trigger serve --help` takes its help from them.
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class InputConfig(_Model):
    endpoints: list[str] = Field(default_factory=lambda: ["tcp://127.0.0.1:5555"], min_length=1)
    """ZeroMQ endpoints to connect to (readout PUB or PUSH sockets)."""
    pattern: Literal["sub", "pull"] = "sub"
    """Socket type: SUB subscribes to a PUB; PULL fair-queues from a PUSH (scale-out)."""
    topics: list[str] = Field(default_factory=lambda: [""])
    """SUB topic prefixes (empty string = everything)."""
    hwm: int = Field(20, ge=1)
    """ZeroMQ receive high-water mark, in messages (each may hold many events: this and
    queue_events bound the daemon's memory)."""
    max_message_bytes: int = Field(256 << 20, ge=1024)
    """Larger messages (all frames together) are rejected as ``oversize``: counted, dead-lettered, and the
    messages after them on the same connection decided as usual."""
    max_frame_bytes: int | None = Field(None, ge=1024)
    """ZeroMQ's own cap on one frame (ZMQ_MAXMSGSIZE), the guard of the daemon's memory against a runaway
    peer: a larger frame makes ZeroMQ drop that connection (it reconnects) without the message ever
    reaching the daemon, so it cannot be counted. Default: 4 x max_message_bytes."""
    track_sequence: bool | None = None
    """Count gaps and restarts per source; default on for SUB, off for PULL (where each worker
    sees only its share of every source)."""
    heartbeat_ms: int = Field(1000, ge=0)
    """TCP keepalive interval on the input connections (whole seconds, at least 1): a readout host
    that stops answering for about four intervals (host down, cable pulled, half-open TCP) is
    dropped and ZeroMQ reconnects. Not ZMTP heartbeats: those time out a healthy connection that
    the daemon is backpressuring. 0 = off."""
    silence_timeout_s: float | None = Field(None, gt=0)
    """When no message has arrived for this long, disconnect and reconnect the input endpoints
    (SUB subscriptions are sent again). null: only report trigger_input_silent_seconds."""
    curve_server_key: Path | None = None
    """CURVE: the readout's public key file (``trigger keygen`` or zmq.auth.create_certificates
    writes ``NAME.key``). Set with curve_secret_key_file to authenticate and encrypt the input:
    the daemon then only talks to a readout holding the matching secret key, and the readout
    (the CURVE server, with a ZAP authenticator) only to daemons whose public key it allows."""
    curve_secret_key_file: Path | None = None
    """CURVE: the daemon's own key pair file (``NAME.key_secret``)."""

    @field_validator("endpoints")
    @classmethod
    def _endpoints(cls, v: list[str]) -> list[str]:
        for e in v:
            if "://" not in e:
                raise ValueError(f"endpoint {e!r} is not a ZeroMQ endpoint like tcp://127.0.0.1:5555")
        return v

    @model_validator(mode="after")
    def _curve_pair(self) -> InputConfig:
        if (self.curve_server_key is None) != (self.curve_secret_key_file is None):
            raise ValueError("curve_server_key and curve_secret_key_file go together: set both or neither")
        return self

    @model_validator(mode="after")
    def _frame_cap_above_message_limit(self) -> InputConfig:
        if self.max_frame_bytes is not None and self.max_frame_bytes < self.max_message_bytes:
            raise ValueError(f"max_frame_bytes ({self.max_frame_bytes}) is below max_message_bytes "
                             f"({self.max_message_bytes}): oversize messages could not be counted")
        return self

    @property
    def frame_cap(self) -> int:
        """ZMQ_MAXMSGSIZE of the input socket: max_frame_bytes, or 4 x max_message_bytes."""
        return self.max_frame_bytes if self.max_frame_bytes is not None else 4 * self.max_message_bytes


class OutputConfig(_Model):
    endpoint: str = "tcp://127.0.0.1:5556"
    """Where the decision PUB socket binds (or connects, with connect: true)."""
    connect: bool = False
    """Connect instead of bind, e.g. to an XSUB/XPUB proxy's XSUB side."""
    dead_letter: str | None = None
    """Optional endpoint a PUB socket binds to, carrying every rejected message with its reason."""
    hwm: int = Field(10000, ge=1)
    curve_secret_key_file: Path | None = None
    """CURVE: the daemon's own key pair file (``NAME.key_secret``). Makes the decision and
    dead-letter sockets CURVE servers: traffic is encrypted and a subscriber must hold the daemon's
    public key (``NAME.key``) and a key pair of its own. Needs a bound output (not connect)."""
    curve_clients: Path | None = None
    """CURVE: a directory of subscriber public key files (``*.key``) allowed to connect; others
    are refused. Unset: any subscriber that holds the daemon's public key may connect."""

    @model_validator(mode="after")
    def _curve(self) -> OutputConfig:
        if self.curve_secret_key_file is not None and self.connect:
            raise ValueError("CURVE on the output needs a bound decision socket; with connect: true, secure "
                             "the proxy's side instead")
        if self.curve_clients is not None and self.curve_secret_key_file is None:
            raise ValueError("curve_clients needs curve_secret_key_file (the daemon's own key pair)")
        return self


class MetricsConfig(_Model):
    port: int = Field(9100, ge=0, le=65535)
    """HTTP port of the Prometheus endpoint; 0 turns it off."""
    host: str = "127.0.0.1"


class PipelineConfig(_Model):
    name: str = "pulse"
    """A registered pipeline (trigger.pipelines): pulse, segment, denoise, or one a plug-in adds."""
    model: Path | None = None
    """ONNX model file; default: the shipped model of the pipeline. A bare name that is not a file
    here (``iact_clean``, ``radio_denoise.onnx``) names a shipped model (``trigger/models/``);
    ``./name`` always means the file here."""
    calibration: Path | None = None
    """Calibration file; default: beside the model (model.calib.json)."""
    working_point: str | None = None
    """Calibrated working point, e.g. fpr_0.01; default: the calibration's default."""
    risk_guard: bool = False
    """denoise pipeline, frame models, Poisson count frames: blend each output frame toward its input by
    the weight that minimises a Stein unbiased estimate of its error (trigger.denoise_guard), so a frame
    the model would make worse is served closer to the input. Costs a second forward pass per frame; a
    frame that cannot be counts (a negative pixel) is served as it came."""

    noise_sources: list[str] = Field(default_factory=list)
    """pulse pipeline: sources whose events carry no signal by construction (random or forced
    triggers, pedestal or pre-trigger windows). When set, the noise monitors (false-positive-rate
    estimate, noise scale, centre drift, input level) read these sources' events only, so faint
    signals in the physics stream cannot bias them, and their decisions are counted in
    trigger_noise_source_events_total (accepted over all: the measured false-positive rate). Empty:
    the monitors read every source's noise-like events (benchmarks/README.md, "Drift monitor")."""

    @field_validator("name")
    @classmethod
    def _registered(cls, value: str) -> str:
        if not is_pipeline(value):
            raise ValueError(f"unknown pipeline {value!r}; known: {', '.join(available_pipelines())}")
        return value

    @model_validator(mode="after")
    def _options_of_one_pipeline(self) -> PipelineConfig:
        if self.risk_guard and self.name != "denoise":
            raise ValueError(f"risk_guard is an option of the denoise pipeline, not of {self.name!r}")
        if self.noise_sources and self.name != "pulse":
            raise ValueError(f"noise_sources is an option of the pulse pipeline, not of {self.name!r}")
        bad = [name for name in self.noise_sources if not SOURCE_RE.fullmatch(name)]
        if bad:
            raise ValueError(f"noise_sources: {bad[0]!r} is not a source name (1-64 chars of [A-Za-z0-9_.:-])")
        return self

    @field_validator("model", mode="before")
    @classmethod
    def _explicitly_local(cls, value: Any) -> Any:
        # Path("./x") is Path("x"): keep an explicit ./ from falling back to a shipped model of that name.
        if isinstance(value, str) and value.startswith(("./", ".\\")):
            return Path.cwd() / value[2:]
        return value
    pedestal: float = 0.0
    """Subtracted from integer ADC data before the gain is applied."""
    gain: float = 1.0
    """Multiplies integer ADC data (after the pedestal) to physical units."""


class BackendConfig(_Model):
    name: str = "auto"
    """Inference backend (see trigger.backends). ``auto``: the first of the pipeline's preferred
    backends that computes the model here (pulse: numba, then onnxruntime; the others:
    onnxruntime); the daemon's log says which, and why any was passed over."""
    threads: int = Field(0, ge=0)
    """Intra-op threads (ONNX Runtime: a pool of threads - 1, shared by the calls running at once,
    plus each call's own thread); 0: usable cores - batching.workers + 1, so the inference
    workers and the pool together fill the cores."""
    options: dict[str, Any] = Field(default_factory=dict)
    """Backend-specific options."""


class BatchingConfig(_Model):
    max_batch: int = Field(256, ge=1)
    """Most events per inference call."""
    max_delay_ms: float = Field(0.0, ge=0)
    """Longest an event waits for a batch to fill before inference runs anyway. 0: a free worker
    takes whatever is queued at once; batches still grow under load, from what queues up while
    the workers are busy, and latency is lower than with a delay (benchmarks/README.md). Raise it
    for a model whose cost per call dwarfs its cost per event, fed small messages."""
    queue_events: int = Field(1024, ge=1)
    """Bound of the queue between receiver and inference, in events; when full the receiver
    waits, so ZeroMQ's high-water mark pushes back (PULL) or drops (SUB, seen as gaps). A few
    batches are enough to keep inference busy; more only adds memory (40 kB per waveform) and
    latency."""
    workers: int = Field(1, ge=1)
    """Batches inferred at the same time, each by its own thread (backends that allow concurrent
    calls: ONNX Runtime); decisions are still published in batch order. Several workers of one
    thread each, instead of one worker of several threads, raise throughput a little and lose far
    less when another process takes CPU time (a multi-threaded call waits for its slowest
    thread); but each batch runs on fewer threads, so latency grows. Throughput over latency:
    raise it. Measurements: benchmarks/README.md."""
    overload: Literal["block", "shed_oldest", "shed_newest"] = "block"
    """What happens when the queue is full. block: the receiver waits (PULL backpressure reaches
    the readout; SUB publishers drop, seen as gaps). shed_oldest / shed_newest: the receiver never
    waits; whole messages are dropped, the oldest queued ones or the incoming one, and counted
    per source in trigger_messages_shed_total and trigger_events_shed_total."""


class Config(_Model):
    input: InputConfig = InputConfig()
    output: OutputConfig = OutputConfig()
    metrics: MetricsConfig = MetricsConfig()
    pipeline: PipelineConfig = PipelineConfig()
    backend: BackendConfig = BackendConfig()
    batching: BatchingConfig = BatchingConfig()
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @model_validator(mode="after")
    def _noise_sources_subscribed(self) -> Config:
        if self.input.pattern == "sub":
            for name in self.pipeline.noise_sources:
                topic = topic_for("waveform", name)
                if not any(topic.startswith(prefix) for prefix in self.input.topics):
                    raise ValueError(f"pipeline.noise_sources: {name!r} would never arrive: no input topic is a "
                                     f"prefix of {topic!r} (input.topics: {self.input.topics})")
        return self

    def model_path(self) -> Path:
        model = self.pipeline.model
        if model is not None:
            if len(model.parts) == 1 and not model.exists():
                shipped = PACKAGE_MODELS / (model.name if model.suffix == ".onnx" else f"{model.name}.onnx")
                if shipped.is_file():
                    return shipped
            return model
        return PACKAGE_MODELS / f"{self.pipeline.name}_default.onnx"  # the shipped model of each pipeline

    def sequence_tracking(self) -> bool:
        if self.input.track_sequence is not None:
            return self.input.track_sequence
        return self.input.pattern == "sub"


def _explain(exc: ValidationError, where: str, overrides: dict[str, Any]) -> str:
    """One clause per error, each blamed on the command line or on the file, whichever set the key."""
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        node: Any = overrides
        for part in err["loc"]:
            node = node.get(part, _MISSING) if isinstance(node, dict) else _MISSING
        lines.append(f"{'command line' if node is not _MISSING else where}: {key}: {msg}")
    return "; ".join(lines)


_MISSING = object()


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """The YAML file (if any) with ``overrides`` on top; raises :class:`ConfigError` naming each bad key.

    Args:
        path: the YAML configuration file; None: defaults and overrides only.
        overrides: nested keys that win over the file (e.g. from ``trigger serve`` options).
    """
    raw: dict[str, Any] = {}
    where = "command line"
    if path is not None:
        where = str(path)
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read configuration {path}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)  # str(exc) spans several lines: one line, with where
            where_ = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            why = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(f"{path}: not valid YAML: {why}{where_}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping, got {type(loaded).__name__}")
        raw = loaded
    try:
        return Config.model_validate(_merge(raw, overrides or {}))
    except ValidationError as exc:
        raise ConfigError(_explain(exc, where, overrides or {})) from exc
