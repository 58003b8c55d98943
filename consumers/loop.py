"""What every consumer process shares: stop on SIGINT/SIGTERM, and safe flushing."""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

from shadowline.errors import KafkaError


def stop_on_signals(stop: threading.Event) -> None:
    """Set ``stop`` on SIGINT or SIGTERM (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())


def flush_all(producer: Any, stop: threading.Event, what: str) -> None:
    """Flush until every message is acknowledged; offsets are committed only after this."""
    while True:
        remaining = producer.flush(5.0)
        if remaining == 0:
            return
        if stop.is_set():
            raise KafkaError(f"{what}: {remaining} messages unacknowledged at shutdown")
        time.sleep(0.1)
