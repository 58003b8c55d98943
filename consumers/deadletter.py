"""Send unusable messages to the dead-letter topic with the reason, never drop them."""

from __future__ import annotations

import logging
from typing import Any

from shadowline.envelopes import DeadLetter

log = logging.getLogger(__name__)


class DeadLetters:
    """Dead-letter producer side for one component (worker, sink)."""

    def __init__(self, producer: Any, topic: str, component: str) -> None:
        self._producer = producer
        self._topic = topic
        self._component = component
        self.count = 0

    def send(self, msg: Any, reason: str) -> None:
        """Dead-letter ``msg`` (a confluent-kafka Message) because of ``reason``."""
        letter = DeadLetter.of(
            topic=msg.topic(), partition=msg.partition(), offset=msg.offset(), reason=reason,
            component=self._component, key=msg.key(), value=msg.value(), headers=msg.headers(),
        )  # fmt: skip
        self._producer.produce(
            self._topic,
            key=msg.key(),
            value=letter.encode(),
            headers=[("content-type", b"avro/binary")],
        )
        self.count += 1
        log.debug("dead-lettered %s[%d]@%d: %s", msg.topic(), msg.partition(), msg.offset(), reason)
