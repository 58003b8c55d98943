"""In-process interleave: candidates answer the same request beside production.

``Interleave`` holds the control (production) model and the experiment's candidates.

- ``__call__(inputs)`` calls the control in the caller's thread and returns its output
  at the control's own latency; the candidates (and the ``secondary``, for noise
  cancellation) then run in a thread pool, each with its own timeout, and every
  output, latency and exception is mirrored as a prediction that the joiner pairs
  like shadow traffic.
- ``rank(inputs)`` is for ``output = "ranking"``: the control and the candidates rank
  concurrently, the rankings are merged by team-draft interleaving (seeded from the
  request ID, so a request's list can be rebuilt), the merged list is served, and
  which model contributed each position is mirrored, so clicks arriving on
  ``feedback`` are credited to the model that placed the clicked item.

The serving path is protected: a candidate that raises, hangs or is slow never
changes what the caller gets or when (``rank`` waits for a candidate at most its
``timeout_ms``). ``__call__`` adds to the caller's path only the mirror record, one
copy of the inputs and an append to a bounded queue; one background thread starts
the candidates from it and times them out. At most ``max_in_flight`` calls per model
run at once, so a hung model holds a bounded number of threads; a call refused
because its model's slots are all held is counted and mirrored as an error saying
so (never left to read as a lost prediction). The bookkeeping holds only calls
queued or in flight. Nothing
here raises into the caller except the control model's own exception.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import hashlib
import random
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from shadowline.calls import DaemonPool, saturated_error, slots_held
from shadowline.config import Config, ExperimentConfig
from shadowline.divergence import OutputError, ranking
from shadowline.envelopes import now_ms
from shadowline.errors import ConfigError, describe
from shadowline.tap import Mirror, sampled

Model = Callable[[Any], Any]


@dataclass
class InterleaveCounters:
    """What happened to the candidate calls (read them for alerts or tests)."""

    calls: int = 0
    candidate_runs: int = 0
    candidate_errors: int = 0
    timeouts: int = 0
    # a call that finished after its timeout was already recorded: result dropped
    late_results: int = 0
    # not started: the model already had max_in_flight calls running
    skipped_overloaded: int = 0
    # requests outside the experiment's `sampling`: only the control ran
    sampled_out: int = 0
    merged: int = 0
    # candidate rankings left out of a merge (timed out, failed or malformed)
    merge_exclusions: int = 0
    internal_errors: int = 0
    last_error: str | None = None


def seed_for(request_id: str) -> int:
    """The team-draft seed of a request: the first 8 bytes of its BLAKE2b digest."""
    return int.from_bytes(hashlib.blake2b(request_id.encode(), digest_size=8).digest(), "big")


def item_id(item: Any) -> str:
    """An item's ID as the warehouse stores it (``{"id": ...}`` objects or bare IDs)."""
    return str(item["id"]) if isinstance(item, dict) else str(item)


def team_draft(
    rankings: Mapping[str, Sequence[Any]], seed: int, length: int | None = None
) -> tuple[list[Any], list[str]]:
    """Merge rankings by team-draft interleaving (multileaving for more than two).

    Each round every team, in an order drawn from ``seed``, adds its best item not
    yet in the list (Radlinski, Kurup & Joachims 2008; Schuth et al. 2014 for more
    teams). Returns the merged items and, per position, the team that placed it.
    ``length`` defaults to the longest ranking; the list stops early when every
    ranking is used up.
    """
    rng = random.Random(seed)
    teams = list(rankings)
    ids = {team: [item_id(x) for x in rankings[team]] for team in teams}
    limit = max((len(r) for r in rankings.values()), default=0) if length is None else length
    merged: list[Any] = []
    owners: list[str] = []
    taken: set[str] = set()
    cursor = dict.fromkeys(teams, 0)
    while len(merged) < limit:
        order = teams[:]
        rng.shuffle(order)
        placed = False
        for team in order:
            if len(merged) >= limit:
                break
            team_ids, i = ids[team], cursor[team]
            while i < len(team_ids) and team_ids[i] in taken:
                i += 1
            cursor[team] = i + 1
            if i < len(team_ids):
                merged.append(rankings[team][i])
                owners.append(team)
                taken.add(team_ids[i])
                placed = True
        if not placed:
            break
    return merged, owners


class _Call:
    """One candidate call: finished once, by the model or by its timeout."""

    __slots__ = (
        "deadline", "done", "error", "event", "event_time", "latency_ms", "lock", "output", "rid",
    )  # fmt: skip

    def __init__(self, deadline: float, rid: str, event_time: int) -> None:
        self.deadline = deadline
        self.rid = rid
        self.event_time = event_time
        self.lock = threading.Lock()
        self.done = False
        self.event = threading.Event()
        self.output: Any = None
        self.error: str | None = None
        self.latency_ms = 0.0


@dataclass
class _Slot:
    name: str
    model: Model
    role: str
    timeout_s: float
    running: int = 0


class Interleave:
    """Serve the control model; run the experiment's candidates beside it.

    ``candidates`` maps every configured candidate name of ``experiment`` (which
    must have ``mode = "interleave"``) to a callable taking one input. With a
    ``secondary`` configured, ``secondary`` is its callable (default: the control
    model called a second time). ``copy_inputs`` gives each candidate its own deep
    copy, so a candidate that mutates its input cannot touch the caller's.
    """

    def __init__(
        self,
        config: Config,
        experiment: str,
        control: Model,
        candidates: Mapping[str, Model],
        *,
        secondary: Model | None = None,
        mirror: Mirror | None = None,
        max_in_flight: int = 64,
        copy_inputs: bool = True,
    ) -> None:
        exp = _interleave_experiment(config, experiment)
        configured = [c.name for c in exp.candidates]
        missing = [n for n in configured if n not in candidates]
        extra = [n for n in candidates if n not in configured]
        if missing or extra:
            raise ConfigError(
                f"Interleave({experiment!r}): candidates must be exactly those configured "
                f"({', '.join(configured)}); missing {missing}, not configured {extra}"
            )
        if secondary is not None and exp.secondary is None:
            raise ConfigError(
                f"Interleave({experiment!r}): a secondary model was given but the experiment "
                "configures no [experiments.secondary]"
            )
        if max_in_flight < 1:
            raise ConfigError(f"max_in_flight must be >= 1, got {max_in_flight}")
        self.experiment = exp
        self.counters = InterleaveCounters()
        self._control = control
        self._slots = [
            _Slot(c.name, candidates[c.name], "candidate", c.timeout_ms / 1000)
            for c in exp.candidates
        ]
        if exp.secondary is not None:
            self._slots.append(
                _Slot(exp.secondary.name, secondary or control, "secondary",
                      exp.secondary.timeout_ms / 1000)
            )  # fmt: skip
        self._max_in_flight = max_in_flight
        self._copy = copy_inputs
        self._owns_mirror = mirror is None
        self._mirror = mirror if mirror is not None else Mirror(config)
        self._lock = threading.Lock()
        # name -> calls in flight in submission order; a model's timeout is fixed, so
        # this is also deadline order and the timeout check only looks at the heads.
        self._pending: dict[str, OrderedDict[int, _Call]] = {
            slot.name: OrderedDict() for slot in self._slots
        }
        self._ids = 0
        self._pool = DaemonPool(max_in_flight * len(self._slots), "shadowline-interleave")
        # Requests whose candidates are still to be started. The caller only appends
        # here (no thread wake-up on its path); the background thread starts the
        # candidates within a millisecond. Bounded: beyond it, requests are skipped.
        self._inbox: deque[tuple[Any, str, int]] = deque()
        self._max_inbox = max(1024, 64 * max_in_flight)
        self._stop = threading.Event()
        self._background = threading.Thread(
            target=self._loop, name="shadowline-interleave", daemon=True
        )
        self._background.start()

    # -- serving side ------------------------------------------------------

    def __call__(
        self, inputs: Any, *, request_id: str | None = None, unit_id: str | None = None
    ) -> Any:
        """The control's output for ``inputs``; candidates run after, off this thread."""
        rid = request_id or uuid.uuid4().hex
        event_time = now_ms()
        output, _ = self._call_control(inputs, rid, unit_id, event_time)
        try:
            self.counters.calls += 1
            if not sampled(rid, self.experiment.sampling):
                self.counters.sampled_out += 1  # not mirrored: no candidate runs either
            elif len(self._inbox) >= self._max_inbox:
                for slot in self._slots:
                    self._skipped(
                        slot, rid, event_time,
                        f"{self._max_inbox} requests were already waiting for their "
                        "candidates to start",
                    )  # fmt: skip
            else:
                # One copy on this thread protects the caller's object; the
                # background thread copies it again for each model.
                self._inbox.append((_copy(inputs) if self._copy else inputs, rid, event_time))
        except Exception as exc:  # never the caller's problem
            self._internal(exc)
        return output

    def rank(
        self, inputs: Any, *, request_id: str | None = None, unit_id: str | None = None
    ) -> list[Any]:
        """The team-draft merge of the control's and the candidates' rankings.

        Candidates rank while the control does; each is waited for at most its
        ``timeout_ms``, and one that is late, fails or returns a malformed ranking is
        left out of the merge (and recorded as such). If nothing can be merged the
        control's own ranking is served.
        """
        rid = request_id or uuid.uuid4().hex
        event_time = now_ms()
        if not sampled(rid, self.experiment.sampling):
            # Not mirrored, so a merge could never be judged: serve the control.
            self.counters.calls += 1
            self.counters.sampled_out += 1
            return self._call_control(inputs, rid, unit_id, event_time)[0]  # type: ignore[no-any-return]
        calls: dict[str, _Call] = {}
        try:
            self.counters.calls += 1
            for slot in self._slots:
                own = _copy(inputs) if self._copy else inputs
                call = self._submit(slot, own, rid, event_time)
                if call is not None and slot.role == "candidate":
                    calls[slot.name] = call
        except Exception as exc:
            self._internal(exc)
        output, _ = self._call_control(inputs, rid, unit_id, event_time)
        try:
            return self._merge(output, calls, rid, event_time)
        except Exception as exc:
            self._internal(exc)
            return output

    async def arank(
        self, inputs: Any, *, request_id: str | None = None, unit_id: str | None = None
    ) -> list[Any]:
        """``rank()`` for asyncio services: the models and the wait for the
        candidates run on a worker thread, so the event loop is never blocked."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            None, functools.partial(self.rank, inputs, request_id=request_id, unit_id=unit_id)
        )

    # -- internals ---------------------------------------------------------

    def _call_control(
        self, inputs: Any, rid: str, unit_id: str | None, event_time: int
    ) -> tuple[Any, float]:
        started = time.perf_counter()
        try:
            output = self._control(inputs)
        except BaseException as exc:
            latency_ms = (time.perf_counter() - started) * 1000
            self._mirror.record(
                experiment=self.experiment.name, request_id=rid, inputs=_as_dict(inputs),
                output=None, latency_ms=latency_ms, model=self.experiment.production_model,
                unit_id=unit_id, error=exc, event_time=event_time,
            )  # fmt: skip
            raise  # the control's own failure is the caller's, as without us
        latency_ms = (time.perf_counter() - started) * 1000
        self._mirror.record(
            experiment=self.experiment.name, request_id=rid, inputs=_as_dict(inputs),
            output=output, latency_ms=latency_ms, model=self.experiment.production_model,
            unit_id=unit_id, event_time=event_time,
        )  # fmt: skip
        return output, latency_ms

    def _submit(self, slot: _Slot, inputs: Any, rid: str, event_time: int) -> _Call | None:
        with self._lock:
            saturated = slot.running >= self._max_in_flight
            if not saturated:
                slot.running += 1
                self._ids += 1
                key = self._ids
                call = _Call(time.monotonic() + slot.timeout_s, rid, event_time)
                self._pending[slot.name][key] = call
        if saturated:
            self._skipped(slot, rid, event_time, slots_held(self._max_in_flight))
            return None
        try:
            self._pool.submit(self._run, slot, key, call, inputs, rid, event_time)
        except Exception:
            with self._lock:
                slot.running -= 1
                self._pending[slot.name].pop(key, None)
            raise
        return call

    def _skipped(self, slot: _Slot, rid: str, event_time: int, why: str) -> None:
        """A call that was not made is recorded as what it is: an error with its reason
        (never left to read as a lost prediction, ``missing_candidate``)."""
        self.counters.skipped_overloaded += 1
        self._mirror.record_prediction(
            experiment=self.experiment.name, request_id=rid, role=slot.role, model=slot.name,
            output=None, latency_ms=0.0, error=saturated_error(slot.role, slot.name, why),
            event_time=event_time,
        )  # fmt: skip

    def _run(
        self, slot: _Slot, key: int, call: _Call, inputs: Any, rid: str, event_time: int
    ) -> None:
        started = time.perf_counter()
        output: Any = None
        error: str | None = None
        try:
            output = slot.model(inputs)
        except BaseException as exc:  # a candidate's failure is data, never a crash
            error = describe(exc)
        latency_ms = (time.perf_counter() - started) * 1000
        with self._lock:
            slot.running -= 1
            self._pending[slot.name].pop(key, None)
        with call.lock:
            if call.done:
                self.counters.late_results += 1
                return
            call.done = True
            call.output, call.error, call.latency_ms = output, error, latency_ms
        call.event.set()
        self.counters.candidate_runs += 1
        if error is not None:
            self.counters.candidate_errors += 1
        self._mirror.record_prediction(
            experiment=self.experiment.name, request_id=rid, role=slot.role, model=slot.name,
            output=output, latency_ms=latency_ms, error=error, event_time=event_time,
        )  # fmt: skip

    def _loop(self) -> None:
        while not self._stop.wait(0.001):
            try:
                self._dispatch()
                self._expire()
            except Exception as exc:  # keep going: the next request may be fine
                self._internal(exc)

    def _dispatch(self) -> None:
        inbox = self._inbox
        while inbox:
            inputs, rid, event_time = inbox.popleft()
            last = len(self._slots) - 1
            for i, slot in enumerate(self._slots):
                # The queued copy is nobody else's: the last model may have it.
                own = _copy(inputs) if self._copy and i < last else inputs
                try:
                    self._submit(slot, own, rid, event_time)
                except Exception as exc:
                    self._internal(exc)

    def _expire(self) -> None:
        now = time.monotonic()
        expired: list[tuple[_Slot, _Call]] = []
        with self._lock:
            for slot in self._slots:
                pending = self._pending[slot.name]
                while pending:
                    key, call = next(iter(pending.items()))
                    if call.deadline > now:
                        break
                    del pending[key]
                    expired.append((slot, call))
        for slot, call in expired:
            with call.lock:
                if call.done:
                    continue
                call.done = True
                call.error = (
                    f"TimeoutError: {slot.role} {slot.name!r} did not answer within "
                    f"{slot.timeout_s * 1000:g} ms"
                )
                call.latency_ms = slot.timeout_s * 1000
            call.event.set()
            self.counters.timeouts += 1
            try:
                self._mirror.record_prediction(
                    experiment=self.experiment.name, request_id=call.rid,
                    role=slot.role, model=slot.name, output=None,
                    latency_ms=call.latency_ms, error=call.error,
                    event_time=call.event_time,
                )  # fmt: skip
            except Exception as exc:
                self._internal(exc)

    def _merge(
        self, control_output: Any, calls: dict[str, _Call], rid: str, event_time: int
    ) -> list[Any]:
        prod = self.experiment.production_model
        control_items = _items(control_output)
        ranking(control_items, "production")  # the control's list must be a ranking
        rankings: dict[str, Sequence[Any]] = {prod: control_items}
        for name, call in calls.items():
            remaining = call.deadline - time.monotonic()
            if not call.event.wait(max(0.0, remaining)) or call.error is not None:
                self.counters.merge_exclusions += 1
                continue
            try:
                items = _items(call.output)
                ranking(items, "candidate")
            except (OutputError, TypeError):
                self.counters.merge_exclusions += 1
                continue
            rankings[name] = items
        if len(rankings) < 2:
            return control_output
        seed = seed_for(rid)
        merged, owners = team_draft(rankings, seed, len(control_items))
        self._mirror.record_prediction(
            experiment=self.experiment.name, request_id=rid, role="interleaved", model=prod,
            output={"seed": seed, "items": [item_id(x) for x in merged], "teams": owners},
            latency_ms=0.0, event_time=event_time,
        )  # fmt: skip
        self.counters.merged += 1
        return merged

    def _internal(self, exc: BaseException) -> None:
        self.counters.internal_errors += 1
        self.counters.last_error = describe(exc)

    def flush(self, timeout: float = 10.0) -> int:
        """Wait for the calls in flight (up to their timeouts) and for the mirror."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._inbox and not any(self._pending.values()):
                    break
            time.sleep(0.01)
        return self._mirror.flush(max(0.0, deadline - time.monotonic()))

    def close(self) -> None:
        """Stop the background thread and the pool (hung candidates are abandoned)."""
        self._stop.set()
        self._background.join(timeout=1.0)
        self._pool.shutdown()
        if self._owns_mirror:
            self._mirror.close()

    def __enter__(self) -> Interleave:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _interleave_experiment(config: Config, name: str) -> ExperimentConfig:
    exp = config.require_experiment(name)
    if exp.mode != "interleave":
        raise ConfigError(
            f'Interleave: experiment {name!r} has mode {exp.mode!r}; set mode = "interleave"'
        )
    return exp


_IMMUTABLE = (str, int, float, bool, bytes, type(None))


def _copy(value: Any) -> Any:
    """A deep copy, fast for JSON-like inputs (dicts, lists, scalars): about 10x
    cheaper than ``copy.deepcopy`` for a 30-field dict; anything else is deep-copied."""
    if isinstance(value, _IMMUTABLE):
        return value
    if type(value) is dict:
        return {k: v if isinstance(v, _IMMUTABLE) else _copy(v) for k, v in value.items()}
    if type(value) is list:
        return [v if isinstance(v, _IMMUTABLE) else _copy(v) for v in value]
    return copy.deepcopy(value)


def _as_dict(inputs: Any) -> dict[str, Any]:
    return inputs if isinstance(inputs, dict) else {"input": inputs}


def _items(output: Any) -> list[Any]:
    if isinstance(output, dict) and "items" in output:
        output = output["items"]
    if not isinstance(output, list):
        raise TypeError(f"a ranking must be a list, got {type(output).__name__}")
    return output
