"""Model calls with their own timeouts, on a bounded set of daemon threads.

Python cannot stop a thread, so a call that times out keeps its thread until the
model returns, perhaps never. ``ModelCalls`` counts those abandoned calls with the
running ones: at most ``limit`` calls of one model exist at once, so a hung model
holds a bounded number of threads, and a call that cannot start because every
slot is held is refused (the caller records that as an error with its reason,
never as a lost answer). The threads are daemons: a hung model cannot keep the
process from exiting, as ``concurrent.futures`` threads (joined at exit) would.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from shadowline.errors import describe


def saturated_error(role: str, name: str, why: str) -> str:
    """The error a request records when its model was not called, and why."""
    return f"shadowline.calls.SaturatedError: {role} {name!r} was not called: {why}"


def slots_held(limit: int) -> str:
    """Why a call was refused when every one of a model's ``limit`` slots is held."""
    return (
        f"all {limit} of its call slots are held by calls still running (past their "
        "timeout if it is hung)"
    )


class DaemonPool:
    """Daemon threads started as needed up to ``max_workers``, reused when idle."""

    def __init__(self, max_workers: int, name: str) -> None:
        self._queue: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...]] | None] = (
            queue.SimpleQueue()
        )
        self._max = max_workers
        self._name = name
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0
        self._closed = False

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on a pool thread; its exceptions are its own business."""
        if self._closed:
            raise RuntimeError(f"{self._name} is closed")
        with self._lock:
            # A thread more when the queued work would outnumber the idle threads.
            spawn = self._idle <= self._queue.qsize() and self._threads < self._max
            if spawn:
                self._threads += 1
                n = self._threads
        self._queue.put((fn, args))
        if spawn:
            threading.Thread(target=self._work, name=f"{self._name}_{n}", daemon=True).start()

    def _work(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            item = self._queue.get()
            with self._lock:
                self._idle -= 1
            if item is None:
                return
            fn, args = item
            try:
                fn(*args)
            except BaseException:  # noqa: S110  callers record their failures themselves
                pass

    def shutdown(self) -> None:
        """Stop the idle threads; busy (or hung) ones end with their call or the process."""
        self._closed = True
        with self._lock:
            threads = self._threads
        for _ in range(threads):
            self._queue.put(None)


class Call:
    """One model call: its result or error, and how long the model took."""

    __slots__ = ("done", "elapsed_ms", "error", "result", "started")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: Any = None
        self.error: str | None = None
        self.elapsed_ms = 0.0
        self.started = time.perf_counter()

    def wait(self, timeout_s: float) -> bool:
        """True when the call finished within ``timeout_s`` of its start."""
        remaining = self.started + timeout_s - time.perf_counter()
        return self.done.wait(max(0.0, remaining))


class ModelCalls:
    """Calls of one model, at most ``limit`` at once counting abandoned ones."""

    def __init__(self, fn: Callable[[Any], Any], limit: int, name: str) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self._fn = fn
        self.limit = limit
        self._running = 0
        # Set when a wait for a slot was in vain, cleared when a call returns: a hung
        # model then costs one wait, not one per call, until it answers again.
        self._starved = False
        self._free = threading.Condition()
        self._pool = DaemonPool(limit, name)

    @property
    def running(self) -> int:
        """Calls started and not yet returned (including those past their timeout)."""
        return self._running

    @property
    def starved(self) -> bool:
        """A wait for a slot was in vain and no call has returned since."""
        return self._starved

    def start(self, arg: Any, wait_s: float = 0.0) -> Call | None:
        """Start ``fn(arg)``; waits up to ``wait_s`` for a free slot, else None."""
        with self._free:
            if self._running >= self.limit and wait_s > 0 and not self._starved:
                self._free.wait_for(lambda: self._running < self.limit, timeout=wait_s)
            if self._running >= self.limit:
                self._starved = True
                return None
            self._running += 1
        call = Call()
        try:
            self._pool.submit(self._execute, call, arg)
        except BaseException:
            self._release()
            raise
        return call

    def _execute(self, call: Call, arg: Any) -> None:
        began = time.perf_counter()
        try:
            call.result = self._fn(arg)
        except BaseException as exc:  # a model's failure is data, never a crash
            call.error = describe(exc)
        call.elapsed_ms = (time.perf_counter() - began) * 1000.0
        self._release()
        call.done.set()

    def _release(self) -> None:
        with self._free:
            self._running -= 1
            self._starved = False
            self._free.notify()

    def saturated_error(self, role: str, name: str) -> str:
        """The error recorded for a call refused because every slot is held."""
        return saturated_error(role, name, slots_held(self.limit))

    def close(self) -> None:
        """Stop idle threads; calls still running end with the model or the process."""
        self._pool.shutdown()
