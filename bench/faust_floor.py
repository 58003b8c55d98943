"""Faust's own floor: an agent that reads the joiner's input topics in batches
(``take_events``, as the joiner does) and does nothing else. bench/throughput.py runs
it beside the joiner, so the joiner's rate can be read against what Faust itself
manages on the same messages.

    .venv/bin/python bench/faust_floor.py CONFIG EXPECTED_EVENTS

Prints one JSON object: {"events": N, "seconds": S, "events_per_s": R}.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
import uuid
from typing import Any

import faust
from faust.worker import Worker
from shadowline.streams.joiner import tune_gc

from shadowline.config import load_config


def main() -> None:
    config = load_config(sys.argv[1])
    expected = int(sys.argv[2])
    kafka = config.kafka
    app = faust.App(
        f"{kafka.namespace}floor-{uuid.uuid4().hex[:6]}",
        broker=[f"kafka://{hp.strip()}" for hp in kafka.bootstrap_servers.split(",")],
        store="memory://",
        datadir=tempfile.mkdtemp(prefix="shadowline-floor-"),
        web_enabled=False,
        topic_partitions=kafka.partitions,
        consumer_auto_offset_reset="earliest",
        stream_buffer_maxsize=max(8192, 2 * config.joiner.batch_max),
    )
    source = app.topic(
        kafka.topic("requests"), kafka.topic("predictions"),
        key_serializer="raw", value_serializer="raw",
    )  # fmt: skip
    seen = {"n": 0, "start": 0.0}

    @app.task
    async def quiet_libraries() -> None:
        for name in ("aiokafka", "faust", "mode"):
            logging.getLogger(name).setLevel(logging.INFO)

    @app.agent(source)
    async def floor(stream: Any) -> None:
        async for events in stream.take_events(
            config.joiner.batch_max, within=config.joiner.batch_wait_s
        ):
            if not seen["n"]:
                seen["start"] = time.perf_counter()
            seen["n"] += len(events)
            if seen["n"] >= expected:
                elapsed = time.perf_counter() - seen["start"]
                out = {"events": seen["n"], "seconds": round(elapsed, 3)}
                out["events_per_s"] = round(seen["n"] / elapsed, 1)
                print(json.dumps(out), flush=True)
                os._exit(0)

    tune_gc()  # the joiner's collector settings, so the comparison is like for like
    Worker(app, loglevel="WARNING", quiet=True, redirect_stdouts=False).execute_from_commandline()


if __name__ == "__main__":
    main()
