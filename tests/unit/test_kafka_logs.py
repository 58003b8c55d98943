"""librdkafka's log lines through Python logging: one line per repeated error."""

from __future__ import annotations

import logging

from shadowline.kafka import RepeatFilter


def record(msg: str) -> logging.LogRecord:
    return logging.LogRecord("shadowline.rdkafka", logging.ERROR, __file__, 1, msg, (), None)


def test_a_retried_failure_logs_once_then_says_how_often_it_repeated():
    clock = [100.0]
    f = RepeatFilter(interval_s=60.0, clock=lambda: clock[0])
    line = "FAIL [rdkafka#consumer-1]: Connect to ipv4#127.0.0.1:1 failed (after {}ms)"
    passed = [f.filter(record(line.format(i))) for i in range(195)]
    assert passed.count(True) == 1 and passed[0]
    assert f.filter(record("another error")) is True  # a different message is its own line
    clock[0] += 61
    last = record(line.format(3))
    assert f.filter(last) is True
    assert last.getMessage().endswith("(repeated 194 times before this)")


def test_the_filter_remembers_a_bounded_number_of_messages():
    f = RepeatFilter(interval_s=60.0, max_keys=10)
    for i in range(1000):
        f.filter(record(f"error kind {'x' * (i % 50)}"))
    assert len(f._seen) <= 10
