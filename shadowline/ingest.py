"""Payload-log ingest: KServe's InferenceService logger and Seldon's request logging
as mirrored traffic, with no code in the serving process.

The model server POSTs each request and each response as a CloudEvent, in binary
mode (``ce-id``, ``ce-type``, ``ce-source``, ``ce-time`` headers, the payload as the
body) or structured mode (``Content-Type: application/cloudevents+json``). The two
events of one inference share ``ce-id``, which becomes the request ID. They are
paired here, so production's latency is the response's ``ce-time`` minus the
request's (the times the logger saw them; arrival times when an event has none),
then mirrored through the tap as a ``requests`` message (the payload as the inputs)
and a production ``predictions`` message (the payload's outputs split as
``shadowline.remote`` splits a candidate's, so both sides have one shape).

A request whose response does not come within ``ingest.pending_s`` is mirrored
alone and ends as ``missing_production``; a response whose request never comes
cannot be compared (there are no inputs to give a candidate) and is counted. At
most ``ingest.max_pending`` inferences wait at once; beyond that the endpoint
answers 503, so a sender retries rather than the process growing.

Routes: ``POST /ingest/EXPERIMENT``, or ``POST /`` where ``ce-inferenceservicename``
names the experiment (or an experiment's ``inference_service``); ``GET /healthz``;
``GET /metrics`` (Prometheus text).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson

from shadowline.config import Config, ExperimentConfig
from shadowline.errors import describe
from shadowline.httpserve import BoundedServer, HardenedHandler, Refused, serve_in_thread
from shadowline.remote import RemoteModelError, v1_outputs, v2_outputs
from shadowline.tap import Mirror

log = logging.getLogger("shadowline.ingest")

REQUEST_TYPES = ("org.kubeflow.serving.inference.request", "io.seldon.serving.inference.request")
RESPONSE_TYPES = (
    "org.kubeflow.serving.inference.response",
    "io.seldon.serving.inference.response",
)
_ID_CHARS = 256


@dataclass
class IngestCounters:
    """What happened to the events received."""

    events: int = 0
    requests: int = 0
    responses: int = 0
    paired: int = 0
    duplicates: int = 0  # an event of a type already received for its ce-id
    requests_without_response: int = 0  # mirrored alone: missing_production
    responses_without_request: int = 0  # could not be compared
    refused: int = 0  # answered 4xx/5xx
    not_mirrored: int = 0  # the tap did not take it (Kafka down, queue full)

    def snapshot(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class _Pending:
    experiment: ExperimentConfig
    arrived: float  # monotonic
    # payload, ce-time (ms since the epoch, None without one), arrival (monotonic s)
    request: tuple[Any, int | None, float] | None = None
    response: tuple[Any, int | None, float] | None = None
    seen: set[str] = field(default_factory=set)


def _ce_time_ms(value: str | None) -> int | None:
    if not value:
        return None
    text = value.strip()
    if len(text) > 40:
        return None
    # RFC 3339 with nanoseconds (Go's logger writes 9 digits; Python takes 6)
    if "." in text:
        head, _, tail = text.partition(".")
        digits = "".join(c for c in tail if c.isdigit())
        zone = tail[len(digits) :]
        text = f"{head}.{digits[:6]}{zone}"
    try:
        stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if stamp.tzinfo is None:
        return None
    return int(stamp.timestamp() * 1000)


def payload_rows(payload: Any) -> int:
    """How many rows an inference payload carries (V1 instances, V2 first dimension,
    Seldon ndarray rows); raises ``ValueError`` naming the field when it is not one."""
    if not isinstance(payload, dict):
        raise ValueError(f"payload is {type(payload).__name__}, not a JSON object")
    if isinstance(payload.get("instances"), list):
        return max(1, len(payload["instances"]))
    if isinstance(payload.get("inputs"), list):
        tensors = payload["inputs"]
        if not tensors or not isinstance(tensors[0], dict):
            raise ValueError("'inputs' holds no tensor objects")
        shape = tensors[0].get("shape")
        if not isinstance(shape, list) or not shape or not isinstance(shape[0], int):
            raise ValueError(f"inputs[0].shape is {shape!r}, not a list of integers")
        return max(1, shape[0])
    data = payload.get("data")
    if isinstance(data, dict) and isinstance(data.get("ndarray"), list):
        return max(1, len(data["ndarray"]))
    keys = sorted(payload)[:8]
    raise ValueError(
        f"payload has none of 'instances' (V1), 'inputs' (V2), 'data.ndarray' (Seldon); "
        f"keys: {keys}"
    )


def production_output(payload: Any, rows: int) -> tuple[Any, str | None]:
    """Production's output (shaped as a remote candidate's) or its error."""
    if isinstance(payload, dict) and "error" in payload:
        return None, f"ModelServerError: {str(payload['error'])[:300]}"
    try:
        if isinstance(payload, dict) and "predictions" in payload:
            return v1_outputs(payload, [rows])[0], None
        if isinstance(payload, dict) and "outputs" in payload:
            return v2_outputs(payload, [rows])[0], None
        data = payload.get("data") if isinstance(payload, dict) else None
        if isinstance(data, dict) and isinstance(data.get("ndarray"), list):
            values = data["ndarray"]
            if len(values) != rows:
                raise RemoteModelError(f"Seldon response has {len(values)} rows for {rows}")
            return (values[0] if rows == 1 else values), None
    except RemoteModelError as exc:
        return None, f"RemoteModelError: {exc}"
    keys = sorted(payload)[:8] if isinstance(payload, dict) else type(payload).__name__
    return None, f"RemoteModelError: response has no predictions or outputs ({keys})"


class Ingest:
    """Pairs request and response events and mirrors them; the HTTP side calls ``event``."""

    def __init__(self, config: Config, mirror: Mirror | None = None) -> None:
        self.config = config
        self.settings = config.ingest
        self.mirror = mirror if mirror is not None else Mirror(config)
        self.counters = IngestCounters()
        self._by_name = {e.name: e for e in config.experiments}
        self._by_service = {
            e.inference_service: e for e in config.experiments if e.inference_service
        }
        self._pending: OrderedDict[str, _Pending] = OrderedDict()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sweeper = threading.Thread(target=self._sweep_loop, name="ingest-sweep", daemon=True)
        self._sweeper.start()

    def experiment_for(self, name: str | None, service: str | None) -> ExperimentConfig:
        """The experiment a path or a ``ce-inferenceservicename`` names (404 otherwise)."""
        if name is not None:
            exp = self._by_name.get(name)
            if exp is None:
                raise Refused(404, 0, f"experiment {name[:80]!r} is not configured")
            return exp
        if not service:
            raise Refused(
                400, 0, "POST /ingest/EXPERIMENT, or send ce-inferenceservicename naming one"
            )
        exp = self._by_service.get(service) or self._by_name.get(service)
        if exp is None:
            raise Refused(
                404, 0, f"ce-inferenceservicename {service[:80]!r} names no experiment "
                "(set inference_service on one, or POST /ingest/EXPERIMENT)",
            )  # fmt: skip
        return exp

    def event(
        self, exp: ExperimentConfig, ce_id: str, ce_type: str, ce_time: str | None, payload: Any
    ) -> None:
        """One CloudEvent; raises ``Refused`` with the field at fault."""
        if not ce_id or len(ce_id) > _ID_CHARS or not ce_id.isprintable():
            raise Refused(400, 0, f"ce-id must be 1 to {_ID_CHARS} printable characters")
        if ce_type in REQUEST_TYPES:
            kind = "request"
            payload_rows(payload)  # a request the candidates cannot read is refused now
        elif ce_type in RESPONSE_TYPES:
            kind = "response"
        else:
            raise Refused(400, 0, f"ce-type {ce_type[:100]!r} is not one of "
                          f"{', '.join(REQUEST_TYPES + RESPONSE_TYPES)}")  # fmt: skip
        stamp = _ce_time_ms(ce_time)
        now = time.monotonic()
        with self._lock:
            self.counters.events += 1
            entry = self._pending.get(ce_id)
            if entry is None:
                if len(self._pending) >= self.settings.max_pending:
                    raise Refused(
                        503, 0, f"{len(self._pending)} inferences wait for their partner "
                        "event; retry later",
                    )  # fmt: skip
                entry = _Pending(exp, now)
                self._pending[ce_id] = entry
            if kind in entry.seen:
                self.counters.duplicates += 1
                return
            entry.seen.add(kind)
            if kind == "request":
                self.counters.requests += 1
                entry.request = (payload, stamp, now)
            else:
                self.counters.responses += 1
                entry.response = (payload, stamp, now)
            if entry.request is None or entry.response is None:
                return
            del self._pending[ce_id]
            self.counters.paired += 1
        self._mirror_pair(ce_id, entry)

    def _mirror_pair(self, ce_id: str, entry: _Pending) -> None:
        assert entry.request is not None and entry.response is not None
        (req_payload, t_req, a_req), (resp_payload, t_resp, a_resp) = entry.request, entry.response
        # The logger's own times when both events carry one, else when they arrived here.
        if t_req is not None and t_resp is not None:
            latency = float(t_resp - t_req)
        else:
            latency = (a_resp - a_req) * 1000.0
        rows = payload_rows(req_payload)
        output, error = production_output(resp_payload, rows)
        ok = self.mirror.record(
            experiment=entry.experiment.name, request_id=ce_id, inputs=req_payload,
            output=output, error=error, latency_ms=max(0.0, latency),
            model=entry.experiment.production_model, event_time=t_req,
        )  # fmt: skip
        if not ok:
            self.counters.not_mirrored += 1

    def sweep(self, now: float | None = None) -> None:
        """Mirror requests whose response is overdue; count orphaned responses."""
        now = time.monotonic() if now is None else now
        due: list[tuple[str, _Pending]] = []
        with self._lock:
            while self._pending:
                ce_id, entry = next(iter(self._pending.items()))
                if now - entry.arrived < self.settings.pending_s:
                    break
                del self._pending[ce_id]
                due.append((ce_id, entry))
        for ce_id, entry in due:
            if entry.request is None:
                self.counters.responses_without_request += 1
                continue
            self.counters.requests_without_response += 1
            payload, stamp, _ = entry.request
            ok = self.mirror.record_request(
                experiment=entry.experiment.name, request_id=ce_id, inputs=payload,
                event_time=stamp,
            )  # fmt: skip
            if not ok:
                self.counters.not_mirrored += 1

    def _sweep_loop(self) -> None:
        while not self._stop.wait(min(0.5, self.settings.pending_s / 4)):
            try:
                self.sweep()
            except Exception as exc:  # keep sweeping; the next round retries
                log.warning("ingest sweep failed: %s", describe(exc))

    def pending(self) -> int:
        return len(self._pending)

    def close(self) -> None:
        """Mirror what still waits (requests alone), then close the tap (once)."""
        if self._stop.is_set():
            return
        self._stop.set()
        self.sweep(now=float("inf"))
        self.mirror.close()


def make_server(config: Config, host: str | None = None, port: int | None = None,
                ingest: Ingest | None = None) -> BoundedServer:  # fmt: skip
    """The ingest endpoint (``shadowline ingest``), loopback by default."""
    from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest

    from shadowline.metrics import counters_registry

    settings = config.ingest
    service = ingest if ingest is not None else Ingest(config)
    registry = counters_registry(
        ("shadowline_ingest", "ingest", service), ("shadowline_ingest_tap", "tap", service.mirror)
    )
    Gauge("shadowline_ingest_pending", "Inferences waiting for their partner event.",
          registry=registry).set_function(service.pending)  # fmt: skip

    class Handler(HardenedHandler):
        methods = ("GET", "HEAD", "POST")
        max_body = settings.max_body_bytes

        def _send(self, code: int, body: dict[str, Any]) -> None:
            self.answer(code, orjson.dumps(body), "application/json")

        def refuse(self, refused: Refused) -> None:
            service.counters.refused += 1
            self._send(refused.status, {"error": refused.message})

        def route(self) -> None:
            url = urlsplit(self.path)
            parts = [unquote(p) for p in url.path.split("/") if p]
            if self.command in ("GET", "HEAD"):
                if parts == ["healthz"]:
                    self._send(200, {"status": "ok", "pending": service.pending()})
                elif parts == ["metrics"]:
                    self.answer(200, generate_latest(registry), CONTENT_TYPE_LATEST)
                else:
                    raise Refused(404, 0, "GET /healthz or /metrics; events are POSTed")
                return
            if parts and (parts[0] != "ingest" or len(parts) != 2):
                raise Refused(404, 0, "POST /ingest/EXPERIMENT or POST /")
            body = self.read_body()
            headers = self.headers
            ctype = (headers.get("Content-Type") or "").split(";")[0].strip().lower()
            try:
                doc = orjson.loads(body) if body else None
            except orjson.JSONDecodeError as exc:
                raise Refused(400, 0, f"body is not JSON: {exc}") from None
            if ctype == "application/cloudevents+json":
                if not isinstance(doc, dict):
                    raise Refused(400, 0, "a structured CloudEvent must be a JSON object")
                attrs = {k: doc.get(k) for k in ("id", "type", "time", "inferenceservicename")}
                payload = doc.get("data")
                if not all(isinstance(v, str | None) for v in attrs.values()):
                    raise Refused(400, 0, "CloudEvent attributes id, type, time are strings")
            else:
                attrs = {
                    "id": headers.get("ce-id"), "type": headers.get("ce-type"),
                    "time": headers.get("ce-time"),
                    "inferenceservicename": headers.get("ce-inferenceservicename"),
                }  # fmt: skip
                payload = doc
                if ctype and ctype != "application/json":
                    raise Refused(415, 0, f"Content-Type {ctype[:60]!r}: send application/json")
            for key in ("id", "type"):
                if not attrs[key]:
                    raise Refused(400, 0, f"ce-{key} is missing")
            exp = service.experiment_for(parts[1] if parts else None, attrs["inferenceservicename"])
            try:
                service.event(exp, str(attrs["id"]), str(attrs["type"]), attrs["time"], payload)
            except ValueError as exc:
                what = f"{attrs['type']} event {str(attrs['id'])[:80]!r}"
                raise Refused(400, 0, f"{what}: {exc}") from None
            self._send(202, {"accepted": True})

    server = BoundedServer((host or settings.host, settings.port if port is None else port),
                           Handler)  # fmt: skip
    server.on_shutdown.append(service.close)
    server.ingest = service  # type: ignore[attr-defined]
    return server


def serve(config: Config, host: str | None = None, port: int | None = None) -> BoundedServer:
    """Start the endpoint in a daemon thread (tests, embedding); ``shutdown()`` stops it."""
    return serve_in_thread(make_server(config, host, port), "shadowline-ingest")
