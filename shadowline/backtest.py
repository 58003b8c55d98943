"""``shadowline backtest``: a new candidate judged on traffic already mirrored.

The experiment's requests in ``[since, until)`` (by event time) are read back from
Kafka's retained log (found by timestamp with ``offsets_for_times``) or, where the
experiment stores them (``store_requests``), from the warehouse; each is paired with
the production prediction recorded when it was served, the candidate is run on it as
the live worker would, and the pair is judged by the joiner's own state machine
(``streams.pairing``). The rows go to the warehouse under their own experiment name,
``EXPERIMENT@backtest:RUN``, so no live view or verdict ever mixes them in, and the
verdict is the live gate's, on those rows.

A run is a function of its inputs: the run ID hashes the experiment, the candidate,
its model reference, the range and the source; a row carries no wall-clock time (its
``joined_at`` is its event time) and no latency (a replay times the replaying machine,
not serving), so the same range, requests and model give identical rows and an
identical verdict, and a run killed half-way and started again rewrites the same rows,
which the warehouse's ReplacingMergeTree collapses. The latency rules are therefore
not judged in a backtest; the output says so.

Memory is bounded by the pairing window, not by the range: within a partition a
request and its production prediction lie close together in the log, so only the
requests whose partner has not been read yet wait, and a wait ends when the other
topic's log has moved ``window_s`` past it.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shadowline import codec, gates, kafka
from shadowline.config import CandidateConfig, Config, ExperimentConfig
from shadowline.envelopes import Comparison, Prediction, Request
from shadowline.errors import DecodeError, ShadowlineError
from shadowline.streams import pairing
from shadowline.warehouse import (
    COMPARISON_COLUMNS,
    Warehouse,
    comparison_row,
    embedded_server_answers,
)

SEP = "@backtest:"
SOURCES = ("auto", "kafka", "warehouse")
BATCH = 2000  # requests scored per round (the worker's consume batch)
INSERT_ROWS = 10_000
MAX_PENDING = 200_000  # per partition: past this the oldest wait ends early
# Request IDs remembered to drop a request mirrored twice; one seen again further apart
# rewrites the same row, which the warehouse collapses.
RECENT_IDS = 50_000
LATENCY_RULES = ("max_p99_latency_ms", "max_p99_latency_ratio", "max_p99_latency_increase_ms")
NOT_JUDGED = (
    "latency rules are not judged in a backtest: a replay times the machine replaying "
    "it, not serving (judge latency on live traffic)"
)


class BacktestError(ShadowlineError):
    """A backtest could not run (bad candidate, empty range, source unavailable)."""


def run_name(experiment: str, run: str) -> str:
    """The experiment name a backtest's rows are stored under."""
    return f"{experiment}{SEP}{run}"


def split_name(name: str) -> tuple[str, str] | None:
    """``(experiment, run)`` for a backtest's experiment name, else None."""
    base, sep, run = name.rpartition(SEP)
    return (base, run) if sep and base and run else None


def run_id(
    experiment: str, candidate: CandidateConfig, since_ms: int, until_ms: int, source: str,
    log_start: str = "",
) -> str:  # fmt: skip
    """A run's ID: the same inputs always name the same run (a re-run replaces its rows).

    ``log_start`` (Kafka: where the range starts in each partition) tells apart a range
    whose start retention has deleted since: fewer requests, another run, not a mix."""
    text = "\x1f".join(
        [experiment, candidate.name, candidate.model, str(since_ms), str(until_ms), source,
         log_start]
    )  # fmt: skip
    return hashlib.blake2b(text.encode(), digest_size=6, person=b"sl-backtest").hexdigest()


def parse_candidate(text: str, experiment: ExperimentConfig) -> CandidateConfig:
    """``NAME=MODEL`` (a new candidate) or ``NAME`` (a configured one, as configured).

    A configured candidate named with a model keeps its settings with the new model.
    Latency probes are off: a backtest does not judge latency, and batches are faster.
    """
    name, sep, model = text.partition("=")
    name, model = name.strip(), model.strip()
    if not name:
        raise BacktestError(f"--candidate {text!r}: expected NAME=MODEL or a configured NAME")
    known = {c.name: c for c in experiment.candidates}
    if experiment.secondary is not None:
        known[experiment.secondary.name] = experiment.secondary
    if name == experiment.production_model:
        raise BacktestError(f"--candidate {name!r} is the production model's name")
    base = known.get(name)
    if base is None and not sep:
        raise BacktestError(
            f"--candidate {name!r} is not a candidate of {experiment.name!r} (configured: "
            f"{', '.join(known) or 'none'}); give a model with NAME=MODEL"
        )
    fields: dict[str, Any] = base.model_dump() if base is not None else {"name": name}
    if sep:
        if not model:
            raise BacktestError(f"--candidate {text!r}: the model after '=' is empty")
        fields["model"] = model
    fields["latency_probe_share"] = 0.0
    try:
        return CandidateConfig(**fields)
    except ValueError as exc:
        raise BacktestError(f"--candidate {text!r}: {exc}") from exc


def derived_experiment(
    experiment: ExperimentConfig, run: str, candidates: list[CandidateConfig]
) -> ExperimentConfig:
    """The experiment a backtest's rows are judged as: the live one's rules, renamed,
    with its candidate(s) alone and the latency rules off."""
    gate_cfg = experiment.gates.model_copy(
        update={name: None for name in LATENCY_RULES} | {"max_feature_psi": None}
    )
    return experiment.model_copy(
        update={
            "name": run_name(experiment.name, run),
            "mode": "shadow",
            "candidates": tuple(candidates),
            "secondary": None,
            "gates": gate_cfg,
        }
    )


@dataclass
class Counts:
    """What a run read and wrote (deterministic for a given range and model)."""

    requests: int = 0
    paired: int = 0
    missing_production: int = 0
    unpaired_production: int = 0
    undecodable: int = 0
    candidate_errors: int = 0
    rows: int = 0


@dataclass
class BacktestResult:
    """A finished run: what it read and the verdict on its rows."""

    run: str
    experiment: str
    stored_as: str
    candidate: str
    model: str
    source: str
    since: datetime
    until: datetime
    counts: Counts
    report: gates.GateReport
    seconds: float = 0.0
    # Wall and CPU seconds of reading, scoring and storing alone (start-up and verdict
    # apart): the rate a range of any size runs at. Never in the JSON (not deterministic).
    scoring_s: float = 0.0
    scoring_cpu_s: float = 0.0
    not_judged: list[str] = field(default_factory=lambda: [NOT_JUDGED])

    @property
    def exit_code(self) -> int:
        return self.report.exit_code

    def as_dict(self) -> dict[str, Any]:
        """The gate's JSON with the run beside it; nothing in it depends on the clock."""
        out = self.report.as_dict()
        out["backtest"] = {
            "run": self.run,
            "experiment": self.experiment,
            "stored_as": self.stored_as,
            "candidate": self.candidate,
            "model": self.model,
            "source": self.source,
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            **self.counts.__dict__,
            "not_judged": self.not_judged,
        }
        return out


# -- runs in the warehouse ------------------------------------------------------------

MAX_LISTED = 20


def stored_runs(warehouse: Warehouse, experiment: str) -> list[dict[str, Any]]:
    """The backtest runs stored for ``experiment`` (view ``backtest_runs``), the latest
    first: run, candidate, rows, first and last event."""
    sql = (
        "SELECT run, stored_as, candidate_model, rows, first_event, last_event "
        f"FROM {warehouse.database}.backtest_runs WHERE experiment = {{experiment:String}} "
        f"ORDER BY stored_at DESC, stored_as, candidate_model LIMIT {MAX_LISTED}"
    )
    return [
        {
            "run": r["run"], "stored_as": r["stored_as"], "candidate": r["candidate_model"],
            "rows": int(r["rows"]), "first_event": _iso(r["first_event"]),
            "last_event": _iso(r["last_event"]),
        }
        for r in warehouse.query(sql, {"experiment": experiment})
    ]  # fmt: skip


def _iso(t: datetime) -> str:
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).isoformat()


def stored_experiment(
    warehouse: Warehouse, experiment: ExperimentConfig, name: str
) -> ExperimentConfig:
    """The experiment a stored run is judged as (its candidates read from its rows)."""
    parts = split_name(name)
    if parts is None:
        raise BacktestError(f"{name!r} is not a backtest run's name")
    rows = warehouse.query(
        f"SELECT DISTINCT candidate_model FROM {warehouse.database}.comparisons_final "
        "WHERE experiment = {experiment:String} ORDER BY candidate_model",
        {"experiment": name},
    )
    if not rows:
        raise BacktestError(f"no backtest run {parts[1]!r} of {experiment.name!r} is stored")
    # Only the names matter here: the rows hold what the models answered.
    cands = [
        CandidateConfig.model_construct(name=r["candidate_model"], model="(stored rows)")
        for r in rows
    ]
    return derived_experiment(experiment, parts[1], cands)


def judge_stored(warehouse: Warehouse, experiment: ExperimentConfig) -> list[dict[str, Any]]:
    """Each stored run of ``experiment`` with its verdict: what `gate check` lists
    beside the live verdict (labelled, never part of it)."""
    out = []
    for r in stored_runs(warehouse, experiment.name):
        exp = stored_experiment(warehouse, experiment, r["stored_as"])
        report = gates.evaluate(warehouse, exp, candidate=r["candidate"],
                                since=gates.EPOCH, labels_from=experiment.name)  # fmt: skip
        verdict = report.candidates[0]
        out.append(r | {"label": "backtest", "verdict": verdict.verdict,
                        "failing": gates.failing_rules(verdict)})  # fmt: skip
    return out


# -- reading the range ---------------------------------------------------------------


@dataclass
class Pair:
    """A request and the production prediction recorded for it (None: never found)."""

    request: Request
    production: Prediction | None
    partition: int


def _ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


def _production_of(pred: Prediction, experiment: ExperimentConfig) -> bool:
    # Shadow: role production. A/B and canary: the prediction of whichever arm served;
    # only production's answers are a baseline to replay against.
    if pred.role == "production":
        return True
    return pred.role == "arm" and pred.model == experiment.production_model


class KafkaSource:
    """The range's requests and production predictions from the retained log."""

    def __init__(
        self, config: Config, experiment: ExperimentConfig, since_ms: int, until_ms: int
    ) -> None:
        self.config = config
        self.exp = experiment
        self.since_ms, self.until_ms = since_ms, until_ms
        self.window_ms = int(experiment.window_s * 1000)
        k = config.kafka
        self.topics = (k.topic("requests"), k.topic("predictions"))
        self._start_cache: dict[str, dict[int, int]] = {}
        # A 16 MiB read-ahead (librdkafka's default is 64 MiB): a replay reads one
        # partition of each topic at a time, and memory should not scale with the log.
        self.consumer = kafka.make_consumer(
            k, f"{k.namespace}backtest",
            **{"enable.partition.eof": True, "queued.max.messages.kbytes": 16384},
        )  # fmt: skip

    def close(self) -> None:
        self.consumer.close()

    def _offsets(self, topic: str, partitions: list[int], ms: int) -> dict[int, int]:
        tps = [kafka.TopicPartition(topic, p, ms) for p in partitions]
        found = self.consumer.offsets_for_times(tps, timeout=30)
        out = {}
        for tp in found:
            if tp.offset < 0:  # nothing at or after ms: read to the end
                _, high = self.consumer.get_watermark_offsets(tp, timeout=30)
                out[tp.partition] = high
            else:
                out[tp.partition] = tp.offset
        return out

    def truncated(self) -> bool:
        """True if retention deleted part of the range from the requests log."""
        topic = self.topics[0]
        partitions = self.partitions()
        starts = self._offsets(topic, partitions, self.since_ms)
        for p in partitions:
            low, _ = self.consumer.get_watermark_offsets(kafka.TopicPartition(topic, p), timeout=30)
            if low > 0 and starts[p] == low:
                first = self._first_timestamp(topic, p, low)
                if first is not None and first > self.since_ms:
                    return True
        return False

    def _first_timestamp(self, topic: str, partition: int, offset: int) -> int | None:
        self.consumer.assign([kafka.TopicPartition(topic, partition, offset)])
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                msg = self.consumer.poll(0.5)
                if msg is not None and msg.error() is None:
                    return msg.timestamp()[1]
            return None
        finally:
            self.consumer.unassign()

    def partitions(self) -> list[int]:
        md = self.consumer.list_topics(self.topics[0], timeout=30).topics.get(self.topics[0])
        if md is None or md.error is not None or not md.partitions:
            raise BacktestError(f"topic {self.topics[0]!r} does not exist on the broker")
        return sorted(md.partitions)

    def _starts(self, topic: str, partitions: list[int]) -> dict[int, int]:
        # Asked once per topic: the run ID and the read use the same offsets.
        if topic not in self._start_cache:
            self._start_cache[topic] = self._offsets(topic, partitions, self.since_ms)
        return self._start_cache[topic]

    def log_start(self) -> str:
        """Where the range starts in each partition of both topics (part of the run ID)."""
        partitions = self.partitions()
        return ";".join(
            f"{t}:" + ",".join(str(o) for _, o in sorted(self._starts(t, partitions).items()))
            for t in self.topics
        )

    def pairs(self, counts: Counts, progress: Callable[[int], None]) -> Iterator[list[Pair]]:
        """Batches of pairs, partition by partition, in log order."""
        req_t, pred_t = self.topics
        partitions = self.partitions()
        # Messages are stamped when they are mirrored, a little after their event time:
        # the log is read one window past ``until``. A request mirrored later than that
        # after it was served is one the live join would have judged without it too.
        past = self.until_ms + self.window_ms
        r_start = self._starts(req_t, partitions)
        r_end = self._offsets(req_t, partitions, past)
        # A production prediction is stamped after its request: start at the same time.
        p_start = self._starts(pred_t, partitions)
        p_end = self._offsets(pred_t, partitions, past + self.window_ms)
        for p in partitions:
            yield from self._partition(
                p, (r_start[p], r_end[p]), (p_start[p], p_end[p]), counts, progress
            )

    def _partition(
        self, p: int, req_range: tuple[int, int], pred_range: tuple[int, int], counts: Counts,
        progress: Callable[[int], None],
    ) -> Iterator[list[Pair]]:  # fmt: skip
        req_t, pred_t = self.topics
        ends = {req_t: req_range[1], pred_t: pred_range[1]}
        done = {req_t: req_range[0] >= req_range[1], pred_t: pred_range[0] >= pred_range[1]}
        assign = [
            kafka.TopicPartition(t, p, start)
            for t, (start, _) in ((req_t, req_range), (pred_t, pred_range))
            if not done[t]
        ]
        waiting: OrderedDict[str, Request] = OrderedDict()  # requests without production
        orphans: OrderedDict[str, Prediction] = OrderedDict()  # production without request
        clock = {req_t: 0, pred_t: 0}  # the latest event time read on each topic
        ready: list[Pair] = []
        if assign:
            self.consumer.assign(assign)
        try:
            while not all(done.values()):
                # A short wait: consume() holds a part-filled batch until it times out, and
                # a partition's tail (or a small range) is a part-filled batch.
                msgs = self.consumer.consume(num_messages=BATCH, timeout=0.1)
                for msg in msgs:
                    err = msg.error()
                    topic = msg.topic() or ""
                    offset = msg.offset()
                    if err is not None:
                        if err.code() == kafka.PARTITION_EOF:
                            done[topic] = True  # read to the end of what the log holds
                            continue
                        raise BacktestError(f"reading {topic} [{p}]: {err}")
                    if offset is None or done[topic] or offset >= ends[topic]:
                        self._finish(done, topic, p)
                        continue
                    if offset == ends[topic] - 1:
                        self._finish(done, topic, p)
                    if topic == req_t:
                        self._on_request(msg, waiting, orphans, ready, clock, counts, p)
                    else:
                        self._on_prediction(msg, waiting, orphans, ready, clock, counts, p)
                self._expire(waiting, orphans, ready, clock, done, counts, p)
                if len(ready) >= BATCH:
                    progress(len(ready))
                    yield ready
                    ready = []
            # Both logs read to their end: every wait is over.
            done = {req_t: True, pred_t: True}
            self._expire(waiting, orphans, ready, clock, done, counts, p)
            if ready:
                progress(len(ready))
                yield ready
        finally:
            if assign:
                self.consumer.unassign()

    def _finish(self, done: dict[str, bool], topic: str, p: int) -> None:
        if not done[topic]:
            done[topic] = True
            # Past its end a topic's messages are of no use: stop fetching them.
            self.consumer.pause([kafka.TopicPartition(topic, p)])

    def _on_request(
        self, msg: Any, waiting: OrderedDict[str, Request], orphans: OrderedDict[str, Prediction],
        ready: list[Pair], clock: dict[str, int], counts: Counts, p: int,
    ) -> None:  # fmt: skip
        ctype = kafka.header(msg, "content-type")
        value = msg.value()
        if value is not None and codec.peek_request(value, ctype) not in (None, self.exp.name):
            return  # another experiment's: not worth decoding
        try:
            req = Request.from_message(msg.key(), value, ctype)
        except DecodeError:
            counts.undecodable += 1  # the live workers dead-letter it too
            return
        if req.experiment != self.exp.name:
            return
        clock[self.topics[0]] = max(clock[self.topics[0]], req.event_time)
        if not self.since_ms <= req.event_time < self.until_ms:
            return
        if req.request_id in waiting:
            return  # a replayed duplicate: the live join keeps the first
        counts.requests += 1
        prod = orphans.pop(req.request_id, None)
        if prod is not None:
            counts.paired += 1
            ready.append(Pair(req, prod, p))
        else:
            waiting[req.request_id] = req

    def _on_prediction(
        self, msg: Any, waiting: OrderedDict[str, Request], orphans: OrderedDict[str, Prediction],
        ready: list[Pair], clock: dict[str, int], counts: Counts, p: int,
    ) -> None:  # fmt: skip
        ctype = kafka.header(msg, "content-type")
        value = msg.value()
        head = codec.peek_prediction(value, ctype) if value is not None else None
        if head is not None and (head[0] != self.exp.name or head[1] not in ("production", "arm")):
            return  # a candidate's answer, or another experiment's: not worth decoding
        try:
            pred = Prediction.from_message(msg.key(), value, ctype)
        except DecodeError:
            return  # the joiner dead-letters it; it is no request's production answer
        if pred.experiment != self.exp.name:
            return
        clock[self.topics[1]] = max(clock[self.topics[1]], pred.event_time)
        if not _production_of(pred, self.exp):
            return
        req = waiting.pop(pred.request_id, None)
        if req is not None:
            counts.paired += 1
            ready.append(Pair(req, pred, p))
        elif self.since_ms <= pred.event_time < self.until_ms:
            orphans.setdefault(pred.request_id, pred)

    def _expire(
        self, waiting: OrderedDict[str, Request], orphans: OrderedDict[str, Prediction],
        ready: list[Pair], clock: dict[str, int], done: dict[str, bool], counts: Counts, p: int,
    ) -> None:  # fmt: skip
        req_t, pred_t = self.topics
        # A request's wait ends when the predictions log has moved a window past it (or
        # ended); the live joiner would have closed its window by then.
        horizon = float("inf") if done[pred_t] else clock[pred_t] - self.window_ms
        for req in _overdue(waiting, horizon):
            counts.missing_production += 1
            ready.append(Pair(req, None, p))
        horizon = float("inf") if done[req_t] else clock[req_t] - self.window_ms
        for _ in _overdue(orphans, horizon):
            counts.unpaired_production += 1


def _overdue(pending: OrderedDict[str, Any], horizon: float) -> Iterator[Any]:
    """Take the oldest entries whose event time is before ``horizon`` (or past the cap)."""
    while pending:
        oldest = next(iter(pending.values()))
        if oldest.event_time >= horizon and len(pending) <= MAX_PENDING:
            return
        yield pending.popitem(last=False)[1]


class WarehouseSource:
    """The range's requests and production predictions as the sink stored them
    (``store_requests``): ``requests`` and ``served``, read page by page."""

    PAGE = 10_000

    def __init__(
        self, warehouse: Warehouse, experiment: ExperimentConfig, since_ms: int, until_ms: int
    ) -> None:
        self.wh = warehouse
        self.exp = experiment
        self.since_ms, self.until_ms = since_ms, until_ms

    def _params(self) -> dict[str, Any]:
        return {
            "experiment": self.exp.name,
            "since": _naive(self.since_ms),
            "until": _naive(self.until_ms),
        }

    def pairs(self, counts: Counts, progress: Callable[[int], None]) -> Iterator[list[Pair]]:
        import orjson

        db = self.wh.database
        after_t, after_id = _naive(self.since_ms - 1), ""
        window = int(self.exp.window_s * 1000)
        while True:
            page = self.wh.query(
                f"SELECT event_time, request_id, unit_id, arm, arm_weight, inputs "
                f"FROM {db}.requests FINAL WHERE experiment = {{experiment:String}} "
                "AND event_time >= {since:DateTime64(3)} AND event_time < {until:DateTime64(3)} "
                "AND (event_time, request_id) > ({after_t:DateTime64(3)}, {after_id:String}) "
                f"ORDER BY event_time, request_id LIMIT {self.PAGE}",
                self._params() | {"after_t": after_t, "after_id": after_id},
            )
            if not page:
                return
            first, last = _epoch_ms(page[0]["event_time"]), _epoch_ms(page[-1]["event_time"])
            served = self.wh.query(
                f"SELECT request_id, model, output, latency_ms, error, event_time "
                f"FROM {db}.served FINAL WHERE experiment = {{experiment:String}} "
                "AND event_time >= {lo:DateTime64(3)} AND event_time < {hi:DateTime64(3)} "
                "AND request_id IN {ids:Array(String)}",
                {
                    "experiment": self.exp.name,
                    "lo": _naive(first - window),
                    "hi": _naive(last + window + 1),
                    "ids": [r["request_id"] for r in page],
                },
            )
            by_id = {r["request_id"]: r for r in served if r["model"] == self.exp.production_model}
            batch = []
            for r in page:
                t = _epoch_ms(r["event_time"])
                req = Request(
                    request_id=r["request_id"], experiment=self.exp.name, event_time=t,
                    inputs=orjson.loads(r["inputs"]), unit_id=r["unit_id"], arm=r["arm"],
                    arm_weight=r["arm_weight"],
                )  # fmt: skip
                s = by_id.get(r["request_id"])
                prod = None
                if s is not None:
                    prod = Prediction(
                        request_id=req.request_id, experiment=self.exp.name, role="production",
                        model=s["model"], output=None if s["output"] is None
                        else orjson.loads(s["output"]), latency_ms=float(s["latency_ms"]),
                        event_time=_epoch_ms(s["event_time"]), error=s["error"],
                    )  # fmt: skip
                counts.requests += 1
                if prod is None:
                    counts.missing_production += 1
                else:
                    counts.paired += 1
                batch.append(Pair(req, prod, 0))
            progress(len(batch))
            yield batch
            # Naive UTC, as the parameters above (a zone-aware value may be written in
            # the client's zone).
            after_t = _naive(_epoch_ms(page[-1]["event_time"]))
            after_id = page[-1]["request_id"]


def _naive(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).replace(tzinfo=None)


def _epoch_ms(t: datetime) -> int:
    t = t if t.tzinfo else t.replace(tzinfo=UTC)
    return round(t.timestamp() * 1000)


# -- scoring and storing -------------------------------------------------------------


def score(
    runner: Any, experiment: ExperimentConfig, pairs: list[Pair], counts: Counts
) -> list[Comparison]:
    """The comparison rows of a batch of pairs, judged as the live joiner judges them."""
    from shadowline.consumers.worker import WorkerStats

    reqs = [p.request for p in pairs]
    stats = WorkerStats()
    size = runner.cfg.batch_size
    results: list[Any] = []
    for start in range(0, len(reqs), size):
        results.extend(runner.run_batched(reqs[start : start + size], stats))
    outcomes = runner.run_probes(reqs, results, stats)
    name = runner.cfg.name
    rows = []
    for pair, outcome in zip(pairs, outcomes, strict=True):
        req = pair.request
        now = req.event_time  # no wall clock in a row: a re-run writes the same one
        state = pairing.new_state(req.request_id, experiment, req.event_time, pair.partition, now)
        pairing.on_request(state, req)
        if pair.production is not None:
            pairing.on_prediction(state, pair.production, experiment, now)
        cand = Prediction(
            request_id=req.request_id, experiment=experiment.name, role="candidate", model=name,
            output=outcome.output, latency_ms=0.0, event_time=req.event_time,
            error=outcome.error, timing=outcome.timing,
        )  # fmt: skip
        emitted = pairing.on_prediction(state, cand, experiment, now)
        emitted = emitted or pairing.on_deadline(state, experiment, now, 0)
        counts.candidate_errors += outcome.error is not None
        for c in emitted:
            # The row as the joiner made it, minus the wall clock and the replay's timing.
            # Set in place: the row is this function's own, and a copy per row
            # (dataclasses.replace) was a tenth of a run's time.
            for attr, value in (
                ("joined_at", c.event_time), ("candidate_latency_ms", None),
                ("candidate_timing", None), ("latency_delta_ms", None),
            ):  # fmt: skip
                object.__setattr__(c, attr, value)
            rows.append(c)
    return rows


class Store:
    """Writes a run's rows: straight into the warehouse when this process may open it,
    else (an embedded warehouse owned by a running sink) through the comparisons topic."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.producer: Any = None
        self.warehouse: Warehouse | None = None
        self._reader: Warehouse | None = None
        self._rows: list[list[Any]] = []
        if config.warehouse.backend == "embedded" and embedded_server_answers(config):
            self.via = "sink"
            self.producer = kafka.make_producer(config.kafka, **{"linger.ms": 20})
            self._topic = config.kafka.topic("comparisons")
            self._failed: str | None = None
            self._last: dict[int, int] = {}  # partition -> offset of our last row
        else:
            self.via = "direct"
            self.warehouse = Warehouse.open_owner(config)

    def add(self, rows: list[Comparison]) -> None:
        if self.producer is not None:
            for c in rows:
                self._produce(c)
            return
        self._rows.extend(comparison_row(c) for c in rows)
        if len(self._rows) >= INSERT_ROWS:
            self.flush()

    def _produce(self, c: Comparison) -> None:
        while True:
            try:
                self.producer.produce(
                    self._topic, key=c.request_id.encode(), value=c.encode(),
                    headers=[("content-type", b"avro/binary")], on_delivery=self._delivered,
                )  # fmt: skip
                break
            except BufferError:
                self.producer.poll(0.1)
        self.producer.poll(0)

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is not None:
            self._failed = str(err)
            return
        p = msg.partition()
        self._last[p] = max(self._last.get(p, -1), msg.offset())

    def flush(self) -> None:
        if self.producer is not None:
            left = self.producer.flush(60)
            if left or self._failed:
                raise BacktestError(
                    f"comparisons not delivered to Kafka: {self._failed or f'{left} pending'}"
                )
            return
        if self._rows:
            assert self.warehouse is not None
            self.warehouse.insert("comparisons", COMPARISON_COLUMNS, self._rows)
            self._rows = []

    def reader(self) -> Warehouse:
        """The warehouse to read from (stored requests, the run's rows): the one written
        to, else one reader opened once and closed with the store."""
        if self.warehouse is not None:
            return self.warehouse
        if self._reader is None:
            self._reader = Warehouse.open_reader(self.config)
        return self._reader

    def wait_stored(self, timeout_s: float) -> None:
        """Until the sink has stored every row of the run (direct writes are already in):
        the sink commits a row's offset only once the row is in the warehouse."""
        if self.via == "direct" or not self._last:
            return
        k = self.config.kafka
        group = f"{k.namespace}sink"
        watcher = kafka.make_consumer(k, group)  # never subscribes: only reads commits
        tps = [kafka.TopicPartition(self._topic, p) for p in sorted(self._last)]
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                try:
                    got = {tp.partition: tp.offset for tp in watcher.committed(tps, timeout=10)}
                except Exception:  # noqa: BLE001  the coordinator is moving: ask again
                    got = {}
                behind = sum(max(0, last + 1 - got.get(p, -1)) for p, last in self._last.items())
                if behind == 0:
                    return
                if time.monotonic() > deadline:
                    raise BacktestError(
                        f"the sink (group {group!r}) has not stored the run's last {behind} "
                        f"rows within {timeout_s:.0f} s: is `shadowline up` (or the sink) running?"
                    )
                time.sleep(0.3)
        finally:
            watcher.close()

    def close(self) -> None:
        for wh in (self.warehouse, self._reader):
            if wh is not None:
                wh.close()


# -- the command ----------------------------------------------------------------------


def _progress(enabled: bool, label: str) -> tuple[Callable[[int], None], Callable[[], None]]:
    seen = [0]
    started = time.monotonic()

    def step(n: int) -> None:
        seen[0] += n
        if enabled:
            rate = seen[0] / max(time.monotonic() - started, 1e-9)
            sys.stderr.write(f"\r{label}: {seen[0]:,} requests ({rate:,.0f}/s)   ")
            sys.stderr.flush()

    def end() -> None:
        if enabled and seen[0]:
            sys.stderr.write("\n")

    return step, end


def run(
    config: Config,
    experiment: str,
    candidate: str,
    since: datetime | None = None,
    until: datetime | None = None,
    source: str = "auto",
    progress: bool | None = None,
    base_dir: Path | None = None,
) -> BacktestResult:
    """Run one backtest and judge it (``shadowline backtest``)."""
    from shadowline.consumers.worker import CandidateRunner, _load

    if source not in SOURCES:
        raise BacktestError(f"--source {source!r}: expected one of {', '.join(SOURCES)}")
    if split_name(experiment):
        raise BacktestError(f"{experiment!r} is a backtest run; backtest its experiment")
    exp = config.require_experiment(experiment, BacktestError)
    cand = parse_candidate(candidate, exp)
    start = since or gates.EPOCH
    end = until or datetime.now(UTC).replace(microsecond=0)
    if start >= end:
        raise BacktestError(
            f"empty range: since {start.isoformat()} is not before until {end.isoformat()}"
        )
    since_ms, until_ms = _ms(start), _ms(end)
    started = time.monotonic()
    store = Store(config)
    kafka_src: KafkaSource | None = None
    try:
        if source != "warehouse":
            kafka_src = KafkaSource(config, exp, since_ms, until_ms)
        chosen = _choose_source(exp, source, kafka_src)
        log_start = ""
        if chosen == "kafka":
            assert kafka_src is not None
            src: Any = kafka_src
            log_start = kafka_src.log_start()
        else:
            src = WarehouseSource(store.reader(), exp, since_ms, until_ms)
        run = run_id(exp.name, cand, since_ms, until_ms, chosen, log_start)
        bt = derived_experiment(exp, run, [cand])
        base = base_dir
        if base is None and not config.source.startswith("<"):
            base = Path(config.source).resolve().parent
        runner = CandidateRunner(cand, _load(cand, base))
        counts = Counts()
        tty = sys.stderr.isatty() if progress is None else progress
        step, finish = _progress(tty, f"backtest {run}")
        recent: OrderedDict[str, None] = OrderedDict()
        t_scoring, cpu_scoring = time.monotonic(), time.process_time()
        try:
            for pairs in src.pairs(counts, step):
                fresh = []
                for pair in pairs:
                    rid = pair.request.request_id
                    if rid in recent:
                        continue  # replayed twice into the log: one row, as live
                    recent[rid] = None
                    if len(recent) > RECENT_IDS:
                        recent.popitem(last=False)
                    fresh.append(pair)
                rows = score(runner, bt, fresh, counts)
                counts.rows += len(rows)
                store.add(rows)
            store.flush()
        finally:
            finish()
            runner.close()
        scoring_s = time.monotonic() - t_scoring
        scoring_cpu_s = time.process_time() - cpu_scoring
        store.wait_stored(120 + counts.rows / 2000)
        report = gates.evaluate(store.reader(), bt, since=start, until=end, labels_from=exp.name)
    finally:
        if kafka_src is not None:
            kafka_src.close()
        store.close()
    return BacktestResult(
        run=run, experiment=exp.name, stored_as=bt.name, candidate=cand.name, model=cand.model,
        source=chosen, since=start, until=end, counts=counts, report=report,
        seconds=time.monotonic() - started, scoring_s=scoring_s, scoring_cpu_s=scoring_cpu_s,
    )  # fmt: skip


def _choose_source(exp: ExperimentConfig, source: str, log: KafkaSource | None) -> str:
    if source != "auto":
        if source == "warehouse" and not exp.stores_requests:
            raise BacktestError(
                f"experiment {exp.name!r} does not store its requests in the warehouse: set "
                "store_requests = true (or read them from Kafka: --source kafka)"
            )
        return source
    if not exp.stores_requests:
        return "kafka"
    assert log is not None
    return "warehouse" if log.truncated() else "kafka"


def timing(result: BacktestResult) -> str:
    """How fast the run went (what ``--json`` leaves out to stay deterministic)."""
    n = result.counts.requests
    return (
        f"{n:,} requests read, scored and stored in {result.scoring_s:.2f} s "
        f"({n / max(result.scoring_s, 1e-9):,.0f}/s; {result.scoring_cpu_s:.2f} CPU s, "
        f"{n / max(result.scoring_cpu_s, 1e-9):,.0f} per CPU s); {result.seconds:.1f} s in all"
    )


def format_result(result: BacktestResult) -> str:
    """The human-readable summary: the run, what it read, then the gate's verdict."""
    c = result.counts
    lines = [
        f"backtest {result.run} of {result.candidate} ({result.model}) on {result.experiment}, "
        f"from {result.source}: {result.since.isoformat()} .. {result.until.isoformat()}",
        f"  {c.requests} requests: {c.paired} with production's recorded answer, "
        f"{c.missing_production} without; {c.candidate_errors} candidate errors; {c.rows} rows "
        f"stored as {result.stored_as!r}",
        f"  {timing(result)}",
        f"  {NOT_JUDGED}",
        gates.format_report(result.report),
        f"re-run exactly: shadowline backtest {result.experiment} --candidate "
        f"{result.candidate}={result.model} --since {result.since.isoformat()} --until "
        f"{result.until.isoformat()} --source {result.source}",
    ]
    return "\n".join(lines)
