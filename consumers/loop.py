"""What every consumer process shares: stop on SIGINT/SIGTERM, and safe flushing."""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any

from shadowline.errors import KafkaError

log = logging.getLogger("shadowline.consumers")


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


def usable(msg: Any, partition_eof: int) -> bool:
    """True for a data message; transient client errors are logged, fatal ones raise."""
    err = msg.error()
    if err is None:
        return True
    if err.code() == partition_eof:
        return False
    if err.fatal():
        raise KafkaError(f"fatal Kafka error: {err}")
    # Broker restarts, rebalances and timeouts: librdkafka recovers by itself.
    log.warning("transient Kafka error: %s", err)
    return False


def commit(consumer: Any, asynchronous: bool = False, **kwargs: Any) -> bool:
    """Commit offsets; a failure (assignment lost, coordinator moving) means a replay.

    Asynchronous only where the outputs the offsets stand for are already acknowledged:
    a commit that is lost then only replays messages whose outputs Kafka holds."""
    from shadowline.kafka import KafkaException

    try:
        consumer.commit(asynchronous=asynchronous, **kwargs)
    except KafkaException as exc:
        log.warning("commit failed, the messages will be replayed: %s", exc)
        return False
    return True
