"""The documentation's message examples must be true: its Avro bytes decode to its JSON,
and every link from the README into docs/ reaches a page and a heading that exist."""

import re
from pathlib import Path

import orjson

from shadowline.envelopes import Control, Feedback, Prediction, Request

ROOT = Path(__file__).resolve().parents[2]
CONTRACTS = (ROOT / "docs" / "contracts.md").read_text()  # the message contracts
CLASSES = {"requests": Request, "predictions": Prediction, "feedback": Feedback, "control": Control}


def _json_examples() -> dict[str, dict]:
    block = CONTRACTS.split("```jsonc\n", 1)[1].split("```", 1)[0]
    out = {}
    for chunk in block.split("// ")[1:]:
        head, body = chunk.split("\n", 1)
        topic = head.split(",")[0].strip()
        out[topic] = orjson.loads(body)
    return out


def _avro_examples() -> dict[str, bytes]:
    block = CONTRACTS.split("<!-- avro-examples -->", 1)[1].split("<!-- /avro-examples -->", 1)[0]
    return {m[1]: bytes.fromhex(m[2]) for m in re.finditer(r"\| (\w+) \| `([0-9a-f]+)` \|", block)}


def test_every_json_example_is_valid_and_matches_its_avro_bytes():
    json_examples, avro_examples = _json_examples(), _avro_examples()
    assert set(json_examples) == set(avro_examples) == set(CLASSES)
    for topic, cls in CLASSES.items():
        obj = json_examples[topic]
        key = (obj.get("request_id") or obj["experiment"]).encode()
        from_json = cls.from_message(key, orjson.dumps(obj), "application/json")
        from_avro = cls.from_message(key, avro_examples[topic], "avro/binary")
        assert from_avro == from_json, topic


def test_the_readme_shows_bytes_and_fingerprints_of_the_current_schemas():
    from shadowline import codec

    avro_examples = _avro_examples()
    for topic, cls in CLASSES.items():
        current = codec.schema(cls.kind).header
        assert avro_examples[topic][:10] == current, f"{topic}: bytes of an older schema"
        fingerprint = current[2:].hex()
        flat = " ".join(CONTRACTS.split())
        assert f"`{cls.__name__}` `{fingerprint}`" in flat, f"{cls.__name__} fingerprint"


def _slug(title: str) -> str:
    return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")


def test_every_readme_link_into_the_docs_reaches_its_heading():
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\((docs/[^)#\s]*)(?:#([\w-]+))?\)", readme)
    assert len(links) >= 10
    for path, anchor in links:
        target = ROOT / path
        assert target.exists(), path
        if anchor:
            headings = re.findall(r"^#{1,6} (.+)$", target.read_text(), flags=re.M)
            assert anchor in {_slug(h) for h in headings}, (path, anchor)
