"""The join's state machine, free of Faust so it can be tested without a broker.

One ``Pending`` per request ID holds what has arrived. ``on_request`` and
``on_prediction`` fold an event in and return the comparisons it completes;
``on_deadline`` closes the window and returns a ``missing_*`` row for every
candidate still unpaired; ``on_purge`` says when the state may be forgotten.

Revisions order the verdicts on one (experiment, request, candidate): a
one-sided (missing) verdict is ``2k``, a two-sided one ``2k + 1``, where ``k``
counts late corrections. The warehouse keeps the highest, so a late partner
replaces a ``missing_*`` row and a stray duplicate after the state was purged
(a new one-sided verdict, revision 0) can never replace a matched row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from shadowline.config import ExperimentConfig
from shadowline.divergence import OutputError, compare
from shadowline.embeddings import similarity_for
from shadowline.envelopes import Comparison, Prediction, Request


@dataclass
class Side:
    """One model's answer as kept in the state."""

    model: str
    output: Any
    latency_ms: float
    error: str | None
    # Default for state written before predictions carried their timing.
    timing: str = "request"

    @classmethod
    def of(cls, p: Prediction) -> Side:
        return cls(p.model, p.output, p.latency_ms, p.error, p.timing)


@dataclass
class Pending:
    """Everything known about one request while its window is open (and a while after)."""

    request_id: str
    experiment: str
    event_time: int
    partition: int
    deadline: int  # wall-clock ms when the window closes
    request_seen: bool = False
    unit_id: str | None = None
    arm: str | None = None
    production: Side | None = None
    candidates: dict[str, Side] = field(default_factory=dict)
    # candidate -> last emitted revision
    emitted: dict[str, int] = field(default_factory=dict)
    closed: bool = False
    purge_at: int | None = None
    duplicates: int = 0

    def dumps(self) -> bytes:
        """Serialise for the changelog-backed table."""
        # orjson's bytes keep a 4 KiB allocation whatever their length; the table
        # holds one per pending request, so keep an exact-size copy (20x smaller).
        return memoryview(orjson.dumps(self, default=_side_dict)).tobytes()

    @classmethod
    def loads(cls, raw: bytes) -> Pending:
        data = orjson.loads(raw)
        prod = data.pop("production")
        cands = data.pop("candidates")
        state = cls(**data)
        state.production = Side(**prod) if prod else None
        state.candidates = {k: Side(**v) for k, v in cands.items()}
        return state


def _side_dict(obj: Any) -> Any:
    if isinstance(obj, Side):
        return obj.__dict__
    raise TypeError(type(obj).__name__)


def new_state(
    request_id: str, exp: ExperimentConfig, event_time: int, partition: int, now: int
) -> Pending:
    """A fresh state whose window closes ``exp.window_s`` after its first event arrived."""
    return Pending(
        request_id=request_id,
        experiment=exp.name,
        event_time=event_time,
        partition=partition,
        deadline=now + int(exp.window_s * 1000),
    )


def on_request(state: Pending, req: Request) -> None:
    """Note the mirrored request (unit and arm travel into the comparison rows)."""
    if state.request_seen:
        state.duplicates += 1
        return
    state.request_seen = True
    state.unit_id = req.unit_id
    state.arm = req.arm
    state.event_time = min(state.event_time, req.event_time)


def on_prediction(
    state: Pending, pred: Prediction, exp: ExperimentConfig, now: int
) -> list[Comparison]:
    """Fold in one prediction; return the comparisons it completes."""
    if pred.role == "production":
        if state.production is not None:
            state.duplicates += 1
            return []
        state.production = Side.of(pred)
        # Before the window closes only complete pairs are emitted; after it,
        # every one-sided row learns that production did arrive.
        ready = [n for n in exp.compared_models() if n in state.candidates or state.closed]
    elif pred.role == "candidate" or pred.role == "secondary":
        if pred.model in state.candidates:
            state.duplicates += 1
            return []
        state.candidates[pred.model] = Side.of(pred)
        ready = [pred.model] if state.production is not None or state.closed else []
    else:
        return []  # served arms are judged per arm in the warehouse, not paired
    state.event_time = min(state.event_time, pred.event_time)
    out = []
    for name in ready:
        prev = state.emitted.get(name)
        if prev is not None and prev % 2 == 1:
            continue  # already paired
        out.append(_emit(state, exp, name, now))
    return out


def on_deadline(state: Pending, exp: ExperimentConfig, now: int, grace_ms: int) -> list[Comparison]:
    """Close the window: a one-sided row for every candidate not yet emitted."""
    if state.closed:
        return []
    state.closed = True
    state.purge_at = now + grace_ms
    return [_emit(state, exp, n, now) for n in exp.compared_models() if n not in state.emitted]


def complete(state: Pending, exp: ExperimentConfig) -> bool:
    """True once every candidate has a two-sided verdict (nothing more can change)."""
    return all(state.emitted.get(n, 0) % 2 == 1 for n in exp.compared_models())


def compact(state: Pending) -> None:
    """Drop outputs from a complete state; what is left still recognises duplicates."""
    if state.production is not None:
        state.production.output = None
    for side in state.candidates.values():
        side.output = None


def _emit(state: Pending, exp: ExperimentConfig, name: str, now: int) -> Comparison:
    prod = state.production
    cand = state.candidates.get(name)
    prev = state.emitted.get(name)
    two_sided = prod is not None and cand is not None
    corrections = 0 if prev is None else prev // 2 + 1
    revision = 2 * corrections + (1 if two_sided else 0)
    state.emitted[name] = revision

    row: dict[str, Any] = {
        "request_id": state.request_id,
        "experiment": state.experiment,
        "event_time": state.event_time,
        "production_model": prod.model if prod else exp.production_model,
        "candidate_model": name,
        "revision": revision,
        "output_type": exp.output,
        "joined_at": now,
        "unit_id": state.unit_id,
        "arm": state.arm,
    }
    if prod is not None:
        row.update(
            production_output=prod.output,
            production_latency_ms=prod.latency_ms,
            production_error=prod.error,
        )
    if cand is not None:
        row.update(
            candidate_output=cand.output,
            candidate_latency_ms=cand.latency_ms,
            candidate_timing=cand.timing,
            candidate_error=cand.error,
        )
    if prod is None and cand is None:
        row["status"] = "missing_both"
    elif prod is None:
        row["status"] = "missing_production"
    elif cand is None:
        row["status"] = "missing_candidate"
    else:
        row["status"] = _judge(row, prod, cand, exp)
        if prev is not None:
            row["status"] = "late"
    return Comparison(**row)


def _judge(row: dict[str, Any], prod: Side, cand: Side, exp: ExperimentConfig) -> str:
    if prod.error and cand.error:
        return "both_error"
    if cand.error:
        return "candidate_error"
    if prod.error:
        return "production_error"
    try:
        div = compare(exp.output, prod.output, cand.output, exp.regression_tolerance,
                      k=exp.ranking_k, similarity=similarity_for(exp))  # fmt: skip
    except OutputError as exc:
        text = f"shadowline.divergence.OutputError: {exc}"
        if exc.side == "production":
            row["production_error"] = text
            return "production_error"
        row["candidate_error"] = text
        return "candidate_error"
    row["agree"] = div.agree
    row["divergence"] = div.divergence
    row["metrics"] = div.metrics
    row["latency_delta_ms"] = cand.latency_ms - prod.latency_ms
    return "matched"
