"""The Go engine's redaction hash and settings, held to the Python tap's (no broker)."""

from __future__ import annotations

import json
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shadowline import proxy_native
from shadowline.config import parse_config
from shadowline.errors import ConfigError
from shadowline.tap import _hash_value

# JSON as Python's parser makes it: ints of any size, floats of any finite value
# (written by json.dumps as repr does), text with any character a JSON string holds.
scalars = (
    st.none() | st.booleans() | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(exclude_categories=("Cs",)), max_size=20)
)  # fmt: skip
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


@pytest.fixture(scope="module")
def exe() -> str:
    return str(proxy_native.binary())


def go_hashes(exe: str, items: list[tuple[str, str]]) -> list[str]:
    lines = "".join(f"{salt}\t{doc}\n" for salt, doc in items)
    done = subprocess.run([exe, "--hash-lines"], input=lines.encode(), capture_output=True,
                          check=True)  # fmt: skip
    return done.stdout.decode().splitlines()


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(values, min_size=1, max_size=30),
    st.text(st.characters(exclude_categories=("Cs", "Cc")), max_size=8),
)
def test_hashes_equal_the_python_taps(exe, docs, salt):
    texts = [json.dumps(d, ensure_ascii=False) for d in docs]
    got = go_hashes(exe, [(salt, t) for t in texts])
    for text, line in zip(texts, got, strict=True):
        value = json.loads(text)
        want = _hash_value(value, salt.encode())
        assert line == f"{want}\t{value!r}", (text, line)


def test_number_forms_read_as_python_reads_them(exe):
    cases = ["1", "-0", "1.0", "1e2", "1E-7", "0.0001", "1e16", "9999999999999998.0", "-0.0",
             "123456789012345678901234567890", "2.5e-308", "1.7976931348623157e308"]  # fmt: skip
    got = go_hashes(exe, [("k", c) for c in cases])
    for text, line in zip(cases, got, strict=True):
        assert line.split("\t")[1] == repr(json.loads(text)), text


def test_malformed_json_is_refused_and_odd_valid_json_read(exe):
    bad = ["{", "[1,]", "01", "1.", "-", '"\\x"', '{"a" 1}', "tru", "1 2", '"a\x01"', "{,}",
           '{"a":1,}', "[", '"abc', "1e", "+1", ".5", "NaN", "Infinity", ""]  # fmt: skip
    got = go_hashes(exe, [("k", b) for b in bad])
    refused = [line.split("\t")[0] for line in got]
    assert refused == ["error"] * len(bad), list(zip(bad, got, strict=False))
    odd = [" [ ] ", "{}", "-0.0e+0", '{"a":1,"a":2,"b":3}', '"\\u00e9\\ud83d\\ude00"', "[[[]]]"]
    got = go_hashes(exe, [("k", o) for o in odd])
    for text, line in zip(odd, got, strict=True):
        assert line.split("\t")[1] == repr(json.loads(text)), text


def config(**proxy_section):
    return parse_config({
        "proxy": proxy_section,
        "kafka": {"bootstrap_servers": "a:1, b:2", "namespace": "x."},
        "experiments": [{"name": "web", "production_model": "prod", "sampling": 0.25,
                         "redact": {"drop": ["a"], "hash": ["b.c"], "salt": "s3"},
                         "proxy": {"upstream": "http://up:9000", "routes": ["/v1/"]},
                         "candidates": [{"name": "c", "model": "m:M"}]}],
    })  # fmt: skip


def test_settings_carry_the_resolved_config():
    s = proxy_native.settings(config(engine="go"), "web", "::1", 8200)
    assert s["listen"] == "[::1]:8200"
    assert s["kafka"]["bootstrap"] == ["a:1", "b:2"]
    assert s["kafka"]["requests_topic"] == "x.requests"
    assert (s["sampling"], s["redact_salt"], s["routes"]) == (0.25, "s3", ["/v1/"])


def test_settings_the_go_engine_cannot_honour_are_refused_by_name():
    bad = parse_config({
        "kafka": {"client": {"socket.keepalive.enable": True}},
        "experiments": [{"name": "web", "production_model": "p",
                         "proxy": {"upstream": "http://up:1"},
                         "candidates": [{"name": "c", "model": "m:M"}]}],
    })  # fmt: skip
    with pytest.raises(ConfigError, match=r"kafka.client \(socket.keepalive.enable\)"):
        proxy_native.settings(bad, "web", "127.0.0.1", 1)
    encrypted = parse_config({
        "kafka": {"security_protocol": "SSL", "ssl_certificate_location": "c.pem",
                  "ssl_key_location": "k.pem", "ssl_key_password": "pw"},
        "experiments": [{"name": "web", "production_model": "p",
                         "proxy": {"upstream": "http://up:1"},
                         "candidates": [{"name": "c", "model": "m:M"}]}],
    })  # fmt: skip
    with pytest.raises(ConfigError, match="kafka.ssl_key_password: .* unencrypted PEM"):
        proxy_native.settings(encrypted, "web", "127.0.0.1", 1)
    with pytest.raises(ConfigError, match="no such experiment|unknown experiment|nope"):
        proxy_native.settings(bad, "nope", "127.0.0.1", 1)


def test_a_missing_toolchain_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("SHADOWLINE_PROXY_BINARY", raising=False)
    with pytest.raises(ConfigError, match="`go` is not on PATH"):
        proxy_native.binary()
    monkeypatch.setenv("SHADOWLINE_PROXY_BINARY", str(tmp_path / "none"))
    with pytest.raises(ConfigError, match="SHADOWLINE_PROXY_BINARY=.*not an executable"):
        proxy_native.binary()


def test_the_printable_table_is_what_python_generates():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "printable_gen", proxy_native.SOURCE / "printable_gen.py"
    )
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert (proxy_native.SOURCE / "printable.go").read_text() == gen.source()
