"""Security basics against the real broker: redaction happens before bytes leave the process."""

import pytest

from shadowline.tap import Mirror
from tests.integration.helpers import read_topic

pytestmark = pytest.mark.integration


def test_redacted_fields_never_reach_the_topic(config_factory):
    exp = {
        "name": "pii",
        "production_model": "p",
        "redact": {"drop": ["email", "card.number"], "hash": ["user_id"], "salt": "pepper"},
        "candidates": [{"name": "c", "model": "m:f"}],
    }
    config, _ = config_factory([exp])
    with Mirror(config) as mirror:
        for i in range(20):
            mirror.record(
                experiment="pii", request_id=f"p-{i}", model="p", output=1, latency_ms=1.0,
                inputs={"email": f"person{i}@example.org", "user_id": f"U-SECRET-{i}",
                        "card": {"number": f"4111-1111-1111-{i:04d}", "brand": "visa"}, "x": i},
            )  # fmt: skip
    messages = read_topic(config, "requests", 20)
    assert len(messages) == 20
    raw = b"".join(m.value() for m in messages)
    assert b"@example.org" not in raw
    assert b"U-SECRET" not in raw
    assert b"4111-1111" not in raw
    assert raw.count(b"sha256:") == 20 and raw.count(b"visa") == 20
