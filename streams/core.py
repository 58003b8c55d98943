"""The join with no framework in it: records and clock ticks in, rows and state changes out.

``JoinerCore`` holds the pending state of the partitions it owns, one dictionary
and one deadline heap per partition. An engine (``streams/engine.py`` on
confluent-kafka, ``streams/joiner.py`` on Faust) feeds it the records it consumed
and the time, and writes what comes back: comparison rows, dead letters, and the
state writes for the changelog. The core never touches Kafka, so every rule of the
join is unit-tested on plain values.

A ``Step`` is one batch. Its state writes come in two groups: ``early`` (states
whose change produced no row) may be written with the rows; ``late`` (states that
now say a row was emitted) only once Kafka holds those rows, or a crash could
leave a state claiming rows that were lost, and the replay would skip them.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from shadowline.streams import pairing

from shadowline.config import SERVED_MODES, Config, ExperimentConfig
from shadowline.envelopes import Comparison, DeadLetter, Prediction, Request
from shadowline.errors import DecodeError
from shadowline.partitioning import partition_for


class Record(NamedTuple):
    """One consumed Kafka message, whatever client read it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]] | None = None


class StateWrite(NamedTuple):
    """One changelog record: the state of ``key`` on ``partition`` (None: forgotten)."""

    partition: int
    key: bytes
    value: bytes | None


@dataclass
class JoinerStats:
    """Counters of one joiner process (exported as metrics, logged on shutdown)."""

    events: int = 0
    emitted: int = 0
    dead_lettered: int = 0
    skipped: int = 0  # invalid requests (the workers dead-letter them) and served arms
    duplicates: int = 0
    expired: int = 0
    purged: int = 0
    # requests first seen on a partition other than their key's murmur2 partition:
    # partners produced by a Java-compatible client can never meet them there
    misplaced: int = 0
    restored: int = 0
    by_status: dict[str, int] = field(default_factory=lambda: defaultdict(int))


@dataclass
class Step:
    """What one batch changed."""

    rows: list[Comparison] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    early: list[StateWrite] = field(default_factory=list)
    late: list[StateWrite] = field(default_factory=list)
    decode_errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    # (topic, request_id, partition it came on, partition its key hashes to)
    misplaced: list[tuple[str, str, int, int]] = field(default_factory=list)
    # key -> partition, by when its write may go out
    _early: dict[bytes, int] = field(default_factory=dict)
    _late: dict[bytes, int] = field(default_factory=dict)

    def misplaced_by_topic(self) -> dict[str, int]:
        """Misplaced requests of this step, counted by the topic they came on."""
        out: dict[str, int] = defaultdict(int)
        for topic, *_ in self.misplaced:
            out[topic] += 1
        return out


class _Partition:
    """The pending states of one partition and the heap of their next due times."""

    __slots__ = ("states", "due")

    def __init__(self) -> None:
        # decoded while in use; settled states (only waiting to be purged) as bytes
        self.states: dict[bytes, pairing.Pending | bytes] = {}
        self.due: list[tuple[int, bytes]] = []


def content_type(headers: Any) -> str | None:
    """The ``content-type`` header as text (headers as a list of pairs or a dict)."""
    if not headers:
        return None
    items = headers.items() if isinstance(headers, dict) else headers
    for key, value in items:
        if str(key).lower() == "content-type" and value is not None:
            return value.decode("latin-1") if isinstance(value, bytes) else str(value)
    return None


class JoinerCore:
    """Pairs requests and predictions by request ID, per partition, within each
    experiment's window; closes windows by a sweep over a heap of deadlines."""

    def __init__(self, config: Config, partitions: int | None = None) -> None:
        k = config.kafka
        self.experiments: dict[str, ExperimentConfig] = {e.name: e for e in config.experiments}
        # (experiment, role) -> the model names that role may carry
        self._models: dict[tuple[str, str], frozenset[str]] = {}
        for e in config.experiments:
            self._models[(e.name, "candidate")] = frozenset(c.name for c in e.candidates)
            self._models[(e.name, "secondary")] = frozenset(
                [e.secondary.name] if e.secondary else []
            )
        self._unpaired = {e.name for e in config.experiments if e.mode in SERVED_MODES}
        self.grace_ms = int(config.joiner.late_grace_s * 1000)
        self.requests_topic = k.topic("requests")
        # Partition count of the co-partitioned input topics, for the placement check
        # (None: not checked).
        self.partitions = partitions
        self.stats = JoinerStats()
        self._parts: dict[int, _Partition] = {}

    # -- ownership -------------------------------------------------------------------

    @property
    def owned(self) -> list[int]:
        return sorted(self._parts)

    def assign(
        self, partition: int, entries: Iterable[tuple[bytes, bytes | None]] = (),
        kept: object | None = None,
    ) -> None:  # fmt: skip
        """Take ``partition``: its state restored from changelog ``entries`` (oldest
        first; a later entry for a key replaces an earlier one, None deletes it), or
        ``kept``, what ``revoke`` returned, when the engine knows it is still current."""
        if isinstance(kept, _Partition):
            self._parts[partition] = kept
            return
        part = self._parts[partition] = _Partition()
        latest: dict[bytes, bytes | None] = {}
        for key, raw in entries:
            latest[key] = raw
        for key, raw in latest.items():
            if raw is None:
                continue
            state = pairing.Pending.loads(raw)
            part.states[key] = raw if state.purge_at is not None else state
            part.due.append((state.purge_at if state.purge_at is not None else state.deadline, key))
        heapq.heapify(part.due)
        self.stats.restored += len(part.states)

    def revoke(self, partition: int) -> object | None:
        """Give ``partition`` up (its state is in the changelog for the next owner);
        returns the state held, which ``assign(kept=...)`` may take back."""
        return self._parts.pop(partition, None)

    def pending(self, partition: int) -> int:
        """Number of states held for ``partition``."""
        part = self._parts.get(partition)
        return len(part.states) if part else 0

    # -- one batch -------------------------------------------------------------------

    def handle(self, records: Iterable[Record], now: int, sweep: bool = True) -> Step:
        """Fold a batch of records in (and, with ``sweep``, close what is due)."""
        step = Step()
        for rec in records:
            self.feed(step, rec, now)
        if sweep:
            self.sweep(step, now)
        return self.seal(step)

    def feed(self, step: Step, rec: Record, now: int) -> None:
        """Fold one record into ``step``. Never raises: a record the join cannot use,
        or one it fails on, becomes a dead letter with the reason."""
        self.stats.events += 1
        try:
            self._on_record(step, rec, now)
        except Exception as exc:  # a bug must not lose the message: keep it, move on
            self._dead(step, rec, f"joiner error: {type(exc).__name__}: {exc}")

    def sweep(self, step: Step, now: int, partitions: Iterable[int] | None = None) -> None:
        """Close every window due by ``now`` and forget states past their grace."""
        for p in self.owned if partitions is None else partitions:
            part = self._parts.get(p)
            if part is not None:
                self._sweep(step, p, part, now)

    def seal(self, step: Step) -> Step:
        """Turn the keys ``step`` touched into state writes (each key written once)."""
        step.early = [self._write(p, key) for key, p in step._early.items()]
        step.late = [self._write(p, key) for key, p in step._late.items()]
        step._early, step._late = {}, {}
        return step

    # -- internals -------------------------------------------------------------------

    def _write(self, partition: int, key: bytes) -> StateWrite:
        part = self._parts.get(partition)
        state = part.states.get(key) if part else None
        if state is None:
            return StateWrite(partition, key, None)
        if isinstance(state, bytes):
            return StateWrite(partition, key, state)
        raw = state.dumps()
        if state.purge_at is not None:
            # Settled until purged: keep only its bytes; a rare late duplicate re-reads them.
            part.states[key] = raw  # type: ignore[union-attr]
        return StateWrite(partition, key, raw)

    def _load(self, part: _Partition, key: bytes) -> pairing.Pending | None:
        # A settled state stays bytes in memory unless a change stores it back.
        state = part.states.get(key)
        return pairing.Pending.loads(state) if isinstance(state, bytes) else state

    def _dead(self, step: Step, rec: Record, reason: str) -> None:
        step.dead.append(
            DeadLetter.of(
                topic=rec.topic,
                partition=rec.partition,
                offset=rec.offset,
                reason=reason,
                component="joiner",
                key=rec.key,
                value=rec.value,
                headers=list(rec.headers.items())
                if isinstance(rec.headers, dict)
                else list(rec.headers or []),
            )  # fmt: skip
        )
        self.stats.dead_lettered += 1

    def _reject(self, step: Step, rec: Record, reason: str, owner: bool) -> None:
        # The workers own `requests` and dead-letter what they cannot use there; the
        # joiner skips such messages so each one is dead-lettered once.
        if owner:
            self._dead(step, rec, reason)
        else:
            self.stats.skipped += 1

    def _emit(self, step: Step, rows: list[Comparison]) -> None:
        step.rows.extend(rows)
        self.stats.emitted += len(rows)
        for row in rows:
            self.stats.by_status[row.status] += 1

    def _store(
        self, step: Step, part: _Partition, p: int, key: bytes, state: pairing.Pending,
        exp: ExperimentConfig, emitted: bool, now: int,
    ) -> None:  # fmt: skip
        if state.purge_at is None and pairing.complete(state, exp):
            # Nothing can change any more: keep only what recognises duplicates.
            pairing.compact(state)
            state.purge_at = now + self.grace_ms
            heapq.heappush(part.due, (state.purge_at, key))
        part.states[key] = state
        if emitted:
            step._late[key] = p
            step._early.pop(key, None)
        elif key not in step._late:
            step._early[key] = p

    def _forget(self, step: Step, part: _Partition, p: int, key: bytes) -> None:
        part.states.pop(key, None)
        step._late.pop(key, None)
        step._early[key] = p

    def _on_record(self, step: Step, rec: Record, now: int) -> None:
        owner = rec.topic != self.requests_topic
        ctype = content_type(rec.headers)
        try:
            if not owner:
                env: Request | Prediction = Request.without_inputs(rec.key, rec.value, ctype)
            else:
                env = Prediction.from_message(rec.key, rec.value, ctype)
        except DecodeError as exc:
            step.decode_errors[rec.topic] += 1
            self._reject(step, rec, f"{type(exc).__name__}: {exc.reason}", owner)
            return
        exp = self.experiments.get(env.experiment)
        if exp is None:
            self._reject(step, rec, f"experiment {env.experiment!r} is not configured", owner)
            return
        role = env.role if owner else None  # type: ignore[union-attr]
        if exp.name in self._unpaired or role == "arm" or role == "interleaved":
            # Served arms (A/B, canary) are judged per arm from the warehouse, and
            # interleaved lists by their clicks there: neither is paired.
            self.stats.skipped += 1
            return
        if role == "candidate" or role == "secondary":
            if env.model not in self._models[(exp.name, role)]:  # type: ignore[union-attr]
                reason = f"{role} {env.model!r} is not configured for {exp.name!r}"  # type: ignore[union-attr]
                self._dead(step, rec, reason)
                return
        part = self._parts.get(rec.partition)
        if part is None:  # fed without an assignment (the Faust engine assigns lazily)
            part = self._parts[rec.partition] = _Partition()
        key = rec.key
        assert key is not None  # from_message checked it equals the request_id
        state = self._load(part, key)
        if state is None:
            state = pairing.new_state(env.request_id, exp, env.event_time, rec.partition, now)
            heapq.heappush(part.due, (state.deadline, key))
            if self.partitions:
                home = partition_for(key, self.partitions)
                if home != rec.partition:
                    self.stats.misplaced += 1
                    step.misplaced.append((rec.topic, env.request_id, rec.partition, home))
        elif state.experiment != env.experiment:
            self._dead(step, rec, f"request_id already belongs to experiment {state.experiment!r}")
            return
        before = state.duplicates
        if not owner:
            pairing.on_request(state, env)  # type: ignore[arg-type]
            rows: list[Comparison] = []
        else:
            rows = pairing.on_prediction(state, env, exp, now)  # type: ignore[arg-type]
        if state.duplicates != before:
            self.stats.duplicates += 1
            return  # a duplicate changes nothing worth a changelog write
        self._emit(step, rows)
        self._store(step, part, rec.partition, key, state, exp, bool(rows), now)

    def _sweep(self, step: Step, p: int, part: _Partition, now: int) -> None:
        heap = part.due
        while heap and heap[0][0] <= now:
            _, key = heapq.heappop(heap)
            state = self._load(part, key)
            if state is None:
                continue
            exp = self.experiments.get(state.experiment)
            if exp is None:
                self._forget(step, part, p, key)
                continue
            if not state.closed and state.deadline <= now and not pairing.complete(state, exp):
                rows = pairing.on_deadline(state, exp, now, self.grace_ms)
                self.stats.expired += 1
                self._emit(step, rows)
                self._store(step, part, p, key, state, exp, bool(rows), now)
                heapq.heappush(heap, (state.purge_at or now, key))
            elif state.purge_at is not None and state.purge_at <= now:
                self._forget(step, part, p, key)
                self.stats.purged += 1
            elif state.purge_at is not None:
                heapq.heappush(heap, (state.purge_at, key))
