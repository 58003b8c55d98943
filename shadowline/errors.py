"""The exception tree: one root, one subclass per concern.

Third-party errors are translated at the boundary with ``raise ... from exc`` so
callers catch ``ShadowlineError`` and never a client library's own types.
"""

from __future__ import annotations


class ShadowlineError(Exception):
    """Root of every error shadowline raises on purpose."""


class ConfigError(ShadowlineError):
    """The configuration file is missing, unreadable or invalid."""


class DecodeError(ShadowlineError):
    """A message could not be decoded or failed validation.

    ``reason`` is the short, human-readable cause that travels to the dead-letter
    topic; it names the field or value at fault.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class KeyDecodeError(DecodeError):
    """The message key (the request ID) is missing or unusable."""


class ValueDecodeError(DecodeError):
    """The message value is corrupt, of an unknown schema, or invalid."""


class EncodeError(ShadowlineError):
    """A value cannot be encoded faithfully (e.g. NaN, which JSON cannot carry)."""


class KafkaError(ShadowlineError):
    """Talking to Kafka failed (admin, produce or consume)."""


class BrokerError(ShadowlineError):
    """The local Kafka broker could not be fetched, formatted, started or stopped."""


class WarehouseError(ShadowlineError):
    """A ClickHouse query or insert failed."""


class Backpressure(WarehouseError):
    """The warehouse refused a write for now; try again after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ModelLoadError(ShadowlineError):
    """A model reference could not be resolved or loaded."""


def describe(exc: BaseException) -> str:
    """Render an exception as ``module.Class: message`` so it survives a process boundary."""
    cls = type(exc)
    module = cls.__module__
    name = (
        cls.__qualname__ if module in ("builtins", "__main__") else f"{module}.{cls.__qualname__}"
    )
    text = str(exc)
    return f"{name}: {text}" if text else name
