"""Typed, frozen envelopes for every topic, converted at the edge.

``from_message(key, value, content_type)`` decodes and validates one Kafka
message (Avro or JSON) and raises ``KeyDecodeError``/``ValueDecodeError`` naming
the field at fault; ``encode()`` writes Avro single-object, ``encode_json()``
the JSON contract. Field names and meanings are those of ``schemas/*.avsc``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Self

import orjson

from shadowline import codec
from shadowline.errors import EncodeError, KeyDecodeError, ValueDecodeError

MAX_ID_LEN = 256
MAX_NAME_LEN = 128
# Event times outside [2000-01-01, now + 1 day] are clock bugs, not data.
MIN_EVENT_MS = 946_684_800_000
MAX_LATENCY_MS = 86_400_000.0

ROLES = ("production", "candidate", "secondary", "arm", "interleaved")
# How a prediction's latency was measured: on the request alone, or as a batch's share.
REQUEST, BATCH_SHARE = "request", "batch_share"
TIMINGS = (REQUEST, BATCH_SHARE)
FEEDBACK_KINDS = ("label", "click", "conversion")
STATUSES = (
    "matched",
    "candidate_error",
    "production_error",
    "both_error",
    "missing_candidate",
    "missing_production",
    "missing_both",
    "late",
)


def now_ms() -> int:
    """Wall-clock now in epoch milliseconds (UTC)."""
    return time.time_ns() // 1_000_000


def _str(rec: dict[str, Any], name: str, *, max_len: int, optional: bool = False) -> str | None:
    value = rec.get(name)
    if value is None:
        if optional:
            return None
        raise ValueDecodeError(f"field {name!r} is missing")
    if not isinstance(value, str):
        raise ValueDecodeError(f"field {name!r} must be a string, got {type(value).__name__}")
    if not value and not optional:
        raise ValueDecodeError(f"field {name!r} is empty")
    if len(value) > max_len:
        raise ValueDecodeError(f"field {name!r} is {len(value)} characters, more than {max_len}")
    return value


def _req_str(rec: dict[str, Any], name: str, max_len: int = MAX_NAME_LEN) -> str:
    value = _str(rec, name, max_len=max_len)
    assert value is not None
    return value


def _event_ms(rec: dict[str, Any], name: str = "event_time") -> int:
    value = rec.get(name)
    if value is None:
        raise ValueDecodeError(f"field {name!r} is missing")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueDecodeError(
            f"field {name!r} must be epoch milliseconds (integer), got {type(value).__name__}"
        )
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueDecodeError(f"field {name!r} is not a finite number")
    ms = int(value)
    if ms < MIN_EVENT_MS or ms > now_ms() + 86_400_000:
        raise ValueDecodeError(f"field {name!r} = {ms} is not a plausible epoch-milliseconds time")
    return ms


def _latency(rec: dict[str, Any], name: str, optional: bool = False) -> float | None:
    value = rec.get(name)
    if value is None:
        if optional:
            return None
        raise ValueDecodeError(f"field {name!r} is missing")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueDecodeError(f"field {name!r} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or value > MAX_LATENCY_MS:
        raise ValueDecodeError(f"field {name!r} = {value} is not a latency in [0, 86400000] ms")
    return value


def _choice(rec: dict[str, Any], name: str, choices: tuple[str, ...]) -> str:
    value = rec.get(name)
    if value not in choices:
        raise ValueDecodeError(f"field {name!r} = {value!r} is not one of {list(choices)}")
    return str(value)


def _json_field(raw: str | None, name: str) -> Any:
    if raw is None:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValueDecodeError(f"field {name!r} is not valid JSON: {exc}") from exc


def _dumps(value: Any, name: str) -> str:
    # orjson writes NaN and infinities as null; refuse rather than change the data.
    try:
        _check_finite(value, name)
    except ValueDecodeError as exc:
        raise EncodeError(exc.reason) from None
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY).decode()


def _check_key(key: bytes | None, request_id: str) -> None:
    if key is None:
        raise KeyDecodeError("message has no key; the key must be the request_id")
    if key != request_id.encode():
        shown = key[:64].decode("utf-8", "replace")
        raise KeyDecodeError(f"key {shown!r} does not match request_id {request_id!r}")


_SCALARS = (str, int, bool, type(None))


def _check_finite(value: Any, name: str) -> None:
    # JSON has no NaN, but Python callers and orjson-from-numpy can produce one;
    # reject it here rather than let it poison averages in the warehouse. A loop
    # rather than recursion: this runs on every decoded input and output.
    stack = [value]
    pop, push = stack.pop, stack.extend
    while stack:
        v = pop()
        t = type(v)
        if t in _SCALARS:
            continue
        if t is dict:
            push(v.values())
        elif t is list:
            push(v)
        elif isinstance(v, float):
            if not math.isfinite(v):
                raise ValueDecodeError(f"field {name!r} contains a non-finite number")
        elif isinstance(v, dict):
            push(v.values())
        elif isinstance(v, list | tuple):
            push(v)


class _Envelope:
    kind: ClassVar[str]

    @classmethod
    def _from_record(cls, rec: dict[str, Any], natural: bool) -> Self:
        raise NotImplementedError

    def _avro_record(self) -> dict[str, Any]:
        raise NotImplementedError

    def _json_record(self) -> dict[str, Any]:
        return self._avro_record()

    @classmethod
    def from_message(
        cls, key: bytes | None, value: bytes | None, content_type: str | None = None
    ) -> Self:
        """Decode and validate one message; raises ``DecodeError`` with the reason."""
        rec, natural = cls._record(value, content_type)
        env = cls._from_record(rec, natural)
        cls._check_message_key(key, env)
        return env

    @classmethod
    def _record(cls, value: bytes | None, content_type: str | None) -> tuple[dict[str, Any], bool]:
        if value is None:
            raise ValueDecodeError("message has no value (tombstone)")
        if codec.sniff(value, content_type) == codec.AVRO:
            return codec.decode_avro(cls.kind, value), False
        return codec.decode_json(value), True

    @classmethod
    def _check_message_key(cls, key: bytes | None, env: Self) -> None:
        _check_key(key, env.request_id)  # type: ignore[attr-defined]

    @property
    def key(self) -> bytes:
        """The Kafka key this envelope is produced with."""
        return self.request_id.encode()  # type: ignore[attr-defined]

    def encode(self) -> bytes:
        """Avro single-object bytes."""
        return codec.encode_avro(self.kind, self._avro_record())

    def encode_json(self) -> bytes:
        """The JSON contract's bytes."""
        return codec.encode_json(self._json_record())


@dataclass(frozen=True, slots=True)
class Request(_Envelope):
    """A mirrored production request."""

    kind: ClassVar[str] = "request"
    request_id: str
    experiment: str
    event_time: int
    inputs: dict[str, Any]
    unit_id: str | None = None
    arm: str | None = None
    arm_weight: float | None = None

    @classmethod
    def without_inputs(
        cls, key: bytes | None, value: bytes | None, content_type: str | None = None
    ) -> Request:
        """The joiner's view of a request message: every field validated but ``inputs``,
        which is neither parsed nor kept (``{}``). The joiner needs to know only that the
        request exists and its unit and arm; the workers validate the inputs and
        dead-letter a request whose inputs are unusable."""
        rec, _ = cls._record(value, content_type)
        env = cls._build(rec, {})
        _check_key(key, env.request_id)
        return env

    @classmethod
    def _from_record(cls, rec: dict[str, Any], natural: bool) -> Request:
        inputs = rec.get("inputs")
        if not natural:
            inputs = _json_field(inputs, "inputs")
        if not isinstance(inputs, dict):
            raise ValueDecodeError(
                f"field 'inputs' must be a JSON object, got {type(inputs).__name__}"
            )
        # No finiteness walk here: whatever was decoded came through orjson.loads, which
        # refuses NaN, Infinity and overflowing numbers ("number is infinity"), so a
        # decoded value is finite (the walk was an eighth of a replay's time).
        return cls._build(rec, inputs)

    @classmethod
    def _build(cls, rec: dict[str, Any], inputs: dict[str, Any]) -> Request:
        return cls(
            request_id=_req_str(rec, "request_id", MAX_ID_LEN),
            experiment=_req_str(rec, "experiment"),
            event_time=_event_ms(rec),
            inputs=inputs,
            unit_id=_str(rec, "unit_id", max_len=MAX_ID_LEN, optional=True),
            arm=_str(rec, "arm", max_len=MAX_NAME_LEN, optional=True),
            arm_weight=_share(rec, "arm_weight"),
        )

    def _avro_record(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "experiment": self.experiment,
            "unit_id": self.unit_id,
            "event_time": self.event_time,
            "inputs": _dumps(self.inputs, "inputs"),
            "arm": self.arm,
            "arm_weight": self.arm_weight,
        }

    def _json_record(self) -> dict[str, Any]:
        rec = self._avro_record()
        rec["inputs"] = self.inputs
        return rec


@dataclass(frozen=True, slots=True)
class Prediction(_Envelope):
    """One model's output (or failure) for one request."""

    kind: ClassVar[str] = "prediction"
    request_id: str
    experiment: str
    role: str
    model: str
    output: Any
    latency_ms: float
    event_time: int
    error: str | None = None
    timing: str = REQUEST
    unit_id: str | None = None

    @classmethod
    def _from_record(cls, rec: dict[str, Any], natural: bool) -> Prediction:
        output = rec.get("output")
        if not natural:
            output = _json_field(output, "output")  # finite: see Request._from_record
        error = _str(rec, "error", max_len=16_384, optional=True)
        if output is None and error is None:
            raise ValueDecodeError("a prediction needs an 'output' or an 'error'")
        latency = _latency(rec, "latency_ms")
        assert latency is not None
        return cls(
            request_id=_req_str(rec, "request_id", MAX_ID_LEN),
            experiment=_req_str(rec, "experiment"),
            role=_choice(rec, "role", ROLES),
            model=_req_str(rec, "model"),
            output=output,
            latency_ms=latency,
            event_time=_event_ms(rec),
            error=error,
            timing=_choice(rec, "timing", TIMINGS) if rec.get("timing") is not None else REQUEST,
            unit_id=_str(rec, "unit_id", max_len=MAX_ID_LEN, optional=True),
        )

    def _avro_record(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "experiment": self.experiment,
            "role": self.role,
            "model": self.model,
            "output": None if self.output is None else _dumps(self.output, "output"),
            "latency_ms": float(self.latency_ms),
            "error": self.error,
            "event_time": self.event_time,
            "timing": self.timing,
            "unit_id": self.unit_id,
        }

    def _json_record(self) -> dict[str, Any]:
        rec = self._avro_record()
        rec["output"] = self.output
        return rec


@dataclass(frozen=True, slots=True)
class Feedback(_Envelope):
    """A label, click or conversion for a past request."""

    kind: ClassVar[str] = "feedback"
    request_id: str
    experiment: str
    feedback_kind: str
    value: Any
    event_time: int

    @classmethod
    def _from_record(cls, rec: dict[str, Any], natural: bool) -> Feedback:
        value = rec.get("value")
        if not natural:
            value = _json_field(value, "value")
        _check_finite(value, "value")
        return cls(
            request_id=_req_str(rec, "request_id", MAX_ID_LEN),
            experiment=_req_str(rec, "experiment"),
            feedback_kind=_choice(rec, "kind", FEEDBACK_KINDS),
            value=value,
            event_time=_event_ms(rec),
        )

    def _avro_record(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "experiment": self.experiment,
            "kind": self.feedback_kind,
            "value": _dumps(self.value, "value"),
            "event_time": self.event_time,
        }

    def _json_record(self) -> dict[str, Any]:
        rec = self._avro_record()
        rec["value"] = self.value
        return rec


@dataclass(frozen=True, slots=True)
class Control(_Envelope):
    """Desired routing state of one experiment (compacted by experiment)."""

    kind: ClassVar[str] = "control"
    experiment: str
    weights: dict[str, float]
    version: int
    event_time: int
    verdict: str | None = None
    reason: str | None = None
    step: int | None = None

    @classmethod
    def _from_record(cls, rec: dict[str, Any], natural: bool) -> Control:
        weights = rec.get("weights")
        if not isinstance(weights, dict):
            raise ValueDecodeError("field 'weights' must be an object of arm -> share")
        for arm, share in weights.items():
            if isinstance(share, bool) or not isinstance(share, int | float):
                raise ValueDecodeError(f"weights[{arm!r}] must be a number")
            if not 0.0 <= float(share) <= 1.0:
                raise ValueDecodeError(f"weights[{arm!r}] = {share} is not a share in [0, 1]")
        version = rec.get("version")
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            raise ValueDecodeError("field 'version' must be a non-negative integer")
        return cls(
            experiment=_req_str(rec, "experiment"),
            weights={str(k): float(v) for k, v in weights.items()},
            version=version,
            event_time=_event_ms(rec),
            verdict=_str(rec, "verdict", max_len=32, optional=True),
            reason=_str(rec, "reason", max_len=16_384, optional=True),
            step=_step(rec),
        )

    @classmethod
    def _check_message_key(cls, key: bytes | None, env: Control) -> None:  # type: ignore[override]
        if key != env.experiment.encode():
            raise KeyDecodeError("control messages must be keyed by their experiment")

    @property
    def key(self) -> bytes:
        return self.experiment.encode()

    def _avro_record(self) -> dict[str, Any]:
        return {
            "experiment": self.experiment,
            "weights": self.weights,
            "verdict": self.verdict,
            "reason": self.reason,
            "version": self.version,
            "step": self.step,
            "event_time": self.event_time,
        }


def _share(rec: dict[str, Any], name: str) -> float | None:
    value = rec.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueDecodeError(f"field {name!r} must be a number or null")
    if not 0.0 <= float(value) <= 1.0:
        raise ValueDecodeError(f"field {name!r} = {value} is not a share in [0, 1]")
    return float(value)


def _step(rec: dict[str, Any]) -> int | None:
    value = rec.get("step")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueDecodeError("field 'step' must be a non-negative integer or null")
    return value


@dataclass(frozen=True, slots=True)
class Comparison(_Envelope):
    """One judged (request, candidate) pair: the row the warehouse stores."""

    kind: ClassVar[str] = "comparison"
    request_id: str
    experiment: str
    event_time: int
    production_model: str
    candidate_model: str
    status: str
    revision: int
    output_type: str
    joined_at: int
    agree: bool | None = None
    divergence: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    production_output: Any = None
    candidate_output: Any = None
    production_latency_ms: float | None = None
    candidate_latency_ms: float | None = None
    candidate_timing: str | None = None
    latency_delta_ms: float | None = None
    production_error: str | None = None
    candidate_error: str | None = None
    unit_id: str | None = None
    arm: str | None = None

    @classmethod
    def _from_record(cls, rec: dict[str, Any], natural: bool) -> Comparison:
        data = {k: rec.get(k) for k in codec.schema("comparison").fields}
        if not natural:
            data["production_output"] = _json_field(data["production_output"], "production_output")
            data["candidate_output"] = _json_field(data["candidate_output"], "candidate_output")
        for name in (
            "request_id",
            "experiment",
            "production_model",
            "candidate_model",
            "output_type",
        ):
            data[name] = _req_str(rec, name, MAX_ID_LEN)
        data["status"] = _choice(rec, "status", STATUSES)
        if data["candidate_timing"] is not None:
            data["candidate_timing"] = _choice(rec, "candidate_timing", TIMINGS)
        data["event_time"] = _event_ms(rec)
        data["joined_at"] = _event_ms(rec, "joined_at")
        data["metrics"] = data["metrics"] or {}
        if not isinstance(data["revision"], int):
            raise ValueDecodeError("field 'revision' must be an integer")
        return cls(**data)  # type: ignore[arg-type]

    @classmethod
    def stored_record(
        cls, key: bytes | None, value: bytes | None, content_type: str | None = None
    ) -> dict[str, Any]:
        """Decode and validate one message into the record as the warehouse stores it
        (outputs as JSON text), as ``from_message(...)._avro_record()`` would, without
        parsing the outputs into objects and writing them back for Avro messages."""
        if value is None or codec.sniff(value, content_type) != codec.AVRO:
            return cls.from_message(key, value, content_type)._avro_record()
        rec = codec.decode_avro(cls.kind, value)
        # Avro already guarantees the types, the enums and the revision's range.
        for name in ("request_id", "experiment", "production_model", "candidate_model",
                     "output_type"):  # fmt: skip
            _req_str(rec, name, MAX_ID_LEN)
        rec["event_time"] = _event_ms(rec)
        rec["joined_at"] = _event_ms(rec, "joined_at")
        for name in ("production_output", "candidate_output"):
            _json_field(rec.get(name), name)
        _check_key(key, rec["request_id"])
        return rec

    def _avro_record(self) -> dict[str, Any]:
        # dataclasses.asdict deep-copies every value; a shallow read is 10x cheaper.
        rec = {name: getattr(self, name) for name in _COMPARISON_FIELDS}
        rec["production_output"] = (
            None
            if self.production_output is None
            else _dumps(self.production_output, "production_output")
        )
        rec["candidate_output"] = (
            None
            if self.candidate_output is None
            else _dumps(self.candidate_output, "candidate_output")
        )
        return rec

    def _json_record(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _COMPARISON_FIELDS}


_COMPARISON_FIELDS = tuple(f.name for f in fields(Comparison))


@dataclass(frozen=True, slots=True)
class DeadLetter(_Envelope):
    """An unusable message and the reason, so nothing is dropped silently."""

    kind: ClassVar[str] = "deadletter"
    topic: str
    partition: int
    offset: int
    reason: str
    component: str
    key_bytes: bytes | None
    value: bytes | None
    event_time: int
    headers: dict[str, bytes] = field(default_factory=dict)
    value_truncated: bool = False

    MAX_VALUE: ClassVar[int] = 1 << 20

    @classmethod
    def of(
        cls,
        *,
        topic: str,
        partition: int,
        offset: int,
        reason: str,
        component: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes | None]] | None = None,
    ) -> DeadLetter:
        """Build a dead letter, truncating a huge original value so it fits the topic."""
        truncated = value is not None and len(value) > cls.MAX_VALUE
        return cls(
            topic=topic,
            partition=partition,
            offset=offset,
            reason=reason[:4096],
            component=component,
            key_bytes=key,
            value=value[: cls.MAX_VALUE] if truncated and value is not None else value,
            event_time=now_ms(),
            headers={k: (v or b"") for k, v in (headers or [])},
            value_truncated=truncated,
        )

    @classmethod
    def _from_record(cls, rec: dict[str, Any], natural: bool) -> DeadLetter:
        return cls(
            topic=rec["topic"],
            partition=rec["partition"],
            offset=rec["offset"],
            reason=rec["reason"],
            component=rec["component"],
            key_bytes=rec.get("key"),
            value=rec.get("value"),
            event_time=rec["event_time"],
            headers=rec.get("headers") or {},
            value_truncated=bool(rec.get("value_truncated")),
        )

    @classmethod
    def _check_message_key(cls, key: bytes | None, env: DeadLetter) -> None:  # type: ignore[override]
        return None

    @property
    def key(self) -> bytes:
        return self.key_bytes or b""

    def _avro_record(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "reason": self.reason,
            "component": self.component,
            "key": self.key_bytes,
            "value": self.value,
            "value_truncated": self.value_truncated,
            "headers": self.headers,
            "event_time": self.event_time,
        }
