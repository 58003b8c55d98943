"""The joiner's entry point (``shadowline run joiner``): pick the engine, run it.

``joiner.engine = "confluent"`` (the default) runs ``streams/engine.py``; ``"faust"``
runs the same core in a Faust app (``streams/faust_engine.py``), one instance only.
"""

from __future__ import annotations

import gc
import logging
import time

from shadowline.config import Config
from shadowline.errors import ConfigError
from shadowline.kafka import group_members

log = logging.getLogger("shadowline.joiner")

# How long a Faust joiner waits for a crashed predecessor's membership to expire
# (its session timeout is 10 s) before it refuses to start beside another member.
FAUST_ALONE_WAIT_S = 20.0


def tune_gc() -> None:
    """Collect cycles less often: the joiner allocates a few objects per event and
    holds every pending state, so CPython's default thresholds ran full collections
    over all of them many times a second (a quarter of the joiner's time)."""
    gc.collect()
    gc.freeze()  # start-up objects (modules, clients) are never scanned again
    gc.set_threshold(100_000, 50, 1000)


def faust_alone(config: Config, wait_s: float = FAUST_ALONE_WAIT_S) -> None:
    """Refuse to start a Faust joiner while its group has another member."""
    group = config.joiner.app_id
    deadline = time.monotonic() + wait_s
    while members := group_members(config.kafka, group):
        if time.monotonic() > deadline:
            raise ConfigError(
                f"joiner.engine = 'faust' runs as one instance, and group {group!r} already "
                f"has {len(members)} member(s). Upstream Faust skipped messages when a "
                "second member joined (requests ended missing_* for good), so scale out "
                "with joiner.engine = 'confluent' (the default) instead"
            )
        time.sleep(1.0)


def run(config: Config, loglevel: str = "WARNING") -> None:
    """Run the configured joiner engine in the foreground until SIGINT/SIGTERM."""
    if config.joiner.engine == "faust":
        from shadowline.streams import faust_engine

        faust_alone(config)
        faust_engine.run(config, loglevel=loglevel)
        return
    from shadowline.streams import engine

    engine.run(config)
