"""``proxy.engine = "go"``: the mirroring proxy's compiled data path.

The Go program in ``shadowline/proxy_go`` forwards and mirrors exactly as
``shadowline.proxy`` does (same routes, request IDs, sampling, redaction hashes,
errors, counters and metric names), but costs a fraction of its CPU per request, so it
carries rates the Python proxy cannot (docs/performance.md#the-mirroring-proxy). It
writes the JSON contract (``content-type: application/json``), which every stage reads
as it reads Avro.

The config is validated here, by the one parser the rest of shadowline uses, and the
resolved settings reach the program as JSON on a pipe, so secrets never appear in its
command line. The program is built once per source version with the Go toolchain
(``go`` 1.26 or newer on PATH) into the user's cache, or taken from
``SHADOWLINE_PROXY_BINARY``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import orjson

from shadowline.config import Config
from shadowline.errors import ConfigError

SOURCE = Path(__file__).resolve().parent / "proxy_go"
_PIPE_BYTES = 60_000  # below Linux's 64 KiB pipe buffer: written before the exec


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "shadowline"


def _source_digest() -> str:
    h = hashlib.sha256()
    for path in sorted(SOURCE.iterdir()):
        if path.suffix in (".go", ".mod", ".sum"):
            h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def binary(build: bool = True) -> Path:
    """The built program: ``SHADOWLINE_PROXY_BINARY``, else the cached build of these
    sources, built now if missing (raises ``ConfigError`` when it cannot be)."""
    given = os.environ.get("SHADOWLINE_PROXY_BINARY")
    if given:
        path = Path(given)
        if not os.access(path, os.X_OK):
            raise ConfigError(f"SHADOWLINE_PROXY_BINARY={given}: not an executable file")
        return path
    path = _cache_dir() / f"proxy-{_source_digest()}" / "shadowline-proxy"
    if path.exists() or not build:
        return path
    go = shutil.which("go")
    if go is None:
        raise ConfigError(
            'proxy.engine = "go" builds shadowline-proxy once with the Go toolchain '
            "(go 1.26 or newer), and `go` is not on PATH: install Go, or set "
            'SHADOWLINE_PROXY_BINARY to a built shadowline-proxy, or use engine = "python"'
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".building-{os.getpid()}")
    env = {**os.environ, "GOWORK": "off", "CGO_ENABLED": "0"}
    done = subprocess.run(
        [go, "build", "-trimpath", "-o", str(partial), "."],
        cwd=SOURCE, env=env, capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode != 0:
        raise ConfigError(f"building shadowline-proxy failed:\n{done.stderr.strip()[-2000:]}")
    os.replace(partial, path)  # atomic: a concurrent start sees none or all of it
    return path


def settings(config: Config, experiment: str, host: str, port: int) -> dict[str, Any]:
    """What the program needs, resolved from a validated config; refuses what the Go
    engine cannot honour, naming the setting."""
    exp, px = config.require_proxy(experiment)
    k = config.kafka
    if k.client:
        raise ConfigError(
            f"kafka.client ({', '.join(sorted(k.client))}) is librdkafka's; proxy.engine = "
            '"go" has another Kafka client: remove them or use engine = "python"'
        )
    if k.ssl_key_password is not None:
        raise ConfigError(
            'kafka.ssl_key_password: proxy.engine = "go" reads unencrypted PEM keys only; '
            'decrypt the key (openssl pkey) or use engine = "python"'
        )
    server = config.proxy
    return {
        "listen": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
        "upstream": px.upstream,
        "routes": list(px.routes),
        "request_id_header": px.request_id_header,
        "unit_id_header": px.unit_id_header or "",
        "inputs_path": px.inputs_path or "",
        "outputs_path": px.outputs_path or "",
        "timeout_s": px.timeout_s,
        "preserve_host": px.preserve_host,
        "max_connections": server.max_connections,
        "go_procs": server.go_procs,
        "max_body_bytes": server.max_body_bytes,
        "max_mirror_bytes": server.max_mirror_bytes,
        "experiment": exp.name,
        "production_model": exp.production_model,
        "sampling": exp.sampling,
        "redact_drop": list(exp.redact.drop),
        "redact_hash": list(exp.redact.hash),
        "redact_salt": exp.redact.salt.get_secret_value(),
        "queue_size": config.tap.queue_size,
        "linger_ms": config.tap.linger_ms,
        "close_timeout_s": config.tap.close_timeout_s,
        "kafka": {
            "bootstrap": [b.strip() for b in k.bootstrap_servers.split(",") if b.strip()],
            "requests_topic": k.topic("requests"),
            "predictions_topic": k.topic("predictions"),
            "security_protocol": k.security_protocol,
            "sasl_mechanism": k.sasl_mechanism or "",
            "sasl_username": k.sasl_username or "",
            "sasl_password": k.sasl_password.get_secret_value() if k.sasl_password else "",
            "ssl_ca_location": k.ssl_ca_location or "",
            "ssl_certificate_location": k.ssl_certificate_location or "",
            "ssl_key_location": k.ssl_key_location or "",
            "max_message_bytes": k.max_message_bytes,
        },
    }


def run(config: Config, experiment: str, host: str | None = None, port: int | None = None) -> None:
    """Become the Go proxy (exec): signals, exit code and output are then its own."""
    h = host or config.proxy.host
    p = config.proxy.port if port is None else port
    doc = orjson.dumps(settings(config, experiment, h, p))
    if len(doc) > _PIPE_BYTES:
        raise ConfigError(f"the proxy's settings are {len(doc)} bytes; at most {_PIPE_BYTES}")
    exe = binary()
    read, write = os.pipe()
    os.write(write, doc)
    os.close(write)
    os.set_inheritable(read, True)
    os.execv(exe, [str(exe), "--config-fd", str(read)])  # noqa: S606  the built program
