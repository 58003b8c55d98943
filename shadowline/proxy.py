"""``shadowline proxy``: an HTTP reverse proxy in front of a production model endpoint
that mirrors what it forwards.

Each request is forwarded to the experiment's ``upstream`` and production's answer
goes back unchanged: status, headers (less the hop-by-hop ones), body, streamed
chunk by chunk as it arrives. After the answer is complete, the request body, the
response body, the status and the upstream's latency are handed to the tap
(``shadowline.tap.Mirror``), which samples, redacts, encodes and produces off the
event loop. The mirror never delays or fails the answer: Kafka down, a body that is
not JSON or is larger than ``proxy.max_mirror_bytes`` is counted and served all the
same. An upstream 5xx or a timeout is recorded as production's error (the client
gets the 5xx, or a 504 for the timeout).

The request ID comes from ``request_id_header`` (``X-Request-Id``); a request
without one gets a generated ID, added to the forwarded request so the upstream's
own logs carry it. Inputs and outputs are whole JSON bodies, or the value at a
dotted path (``inputs_path = "instances.0"``).

Built on aiohttp (server and pooled client on one event loop), on uvloop when it is
installed (``pip install 'shadowline[proxy]'``).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from shadowline.config import Config, ExperimentConfig, ProxyConfig, ProxyServerConfig
from shadowline.errors import describe
from shadowline.tap import Mirror

log = logging.getLogger("shadowline.proxy")

# RFC 9110 §7.6.1: meaningful for one connection only, never forwarded.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "transfer-encoding", "upgrade", "proxy-connection",
})  # fmt: skip


@dataclass
class ProxyCounters:
    """What happened to the requests forwarded."""

    forwarded: int = 0
    mirrored: int = 0  # handed to the tap
    not_mirrored_route: int = 0  # paths outside the experiment's routes
    not_mirrored_size: int = 0  # a body over max_mirror_bytes
    not_mirrored_tap: int = 0  # the tap refused it (queue full, sampled out, ...)
    upstream_errors: int = 0  # 5xx answers
    upstream_timeouts: int = 0
    upstream_unreachable: int = 0


def at_path(value: Any, path: str | None) -> Any:
    """The value at a dotted path (list indices as numbers); raises ``KeyError``."""
    if not path:
        return value
    for part in path.split("."):
        if isinstance(value, list) and part.lstrip("-").isdigit():
            value = value[int(part)]
        elif isinstance(value, dict) and part in value:
            value = value[part]
        else:
            raise KeyError(part)
    return value


def _json(body: bytes) -> Any:
    return orjson.loads(body) if body else None


class Proxy:
    """The forwarding and the mirroring of one experiment (``handle`` is the aiohttp
    handler)."""

    def __init__(self, config: Config, experiment: str, mirror: Mirror | None = None) -> None:
        self.config = config
        self.exp: ExperimentConfig
        self.settings: ProxyConfig
        self.exp, self.settings = config.require_proxy(experiment)
        self.server: ProxyServerConfig = config.proxy
        self.mirror = mirror if mirror is not None else Mirror(config)
        self.counters = ProxyCounters()
        self.upstream = self.settings.upstream.rstrip("/")
        self._session: Any = None
        self._id_header = self.settings.request_id_header
        # "/v1/models" mirrors itself and what is under it, "/" everything
        self._routes = tuple(r.rstrip("/") for r in self.settings.routes)

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self.server.max_connections, ttl_dns_cache=300, keepalive_timeout=30
        )
        timeout = aiohttp.ClientTimeout(total=self.settings.timeout_s)
        # auto_decompress=False: the client gets the upstream's bytes, encoded as they came
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=timeout, auto_decompress=False, cookie_jar=None
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _mirrored(self, path: str) -> bool:
        return any(not r or path == r or path.startswith(r + "/") for r in self._routes)

    async def handle(self, request: Any) -> Any:
        """Forward one request; stream the answer back; mirror it once complete."""
        self.counters.forwarded += 1
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP
                   and k.lower() != "host"]  # fmt: skip
        request_id = request.headers.get(self._id_header)
        if not request_id:
            request_id = str(uuid.uuid4())
            headers.append((self._id_header, request_id))
        if self.settings.preserve_host and "Host" in request.headers:
            headers.append(("Host", request.headers["Host"]))
        mirror = self._mirrored(request.path)
        if not mirror:
            self.counters.not_mirrored_route += 1
        limit = self.server.max_mirror_bytes
        body = await request.read()
        url = self.upstream + request.rel_url.path_qs
        started = time.perf_counter()
        try:
            async with self._session.request(
                request.method, url, headers=headers, data=body or None, allow_redirects=False
            ) as upstream:
                answer = web.StreamResponse(status=upstream.status, reason=upstream.reason)
                for k, v in upstream.headers.items():
                    if k.lower() not in HOP_BY_HOP and k.lower() != "content-length":
                        answer.headers.add(k, v)
                if upstream.content_length is not None:
                    answer.content_length = upstream.content_length
                await answer.prepare(request)
                kept = bytearray()
                overflow = False
                async for chunk in upstream.content.iter_any():
                    await answer.write(chunk)
                    if mirror and not overflow:
                        if len(kept) + len(chunk) > limit:
                            overflow = True
                            kept.clear()
                        else:
                            kept += chunk
                await answer.write_eof()
                latency = (time.perf_counter() - started) * 1000.0
                status = upstream.status
        except TimeoutError:
            self.counters.upstream_timeouts += 1
            latency = (time.perf_counter() - started) * 1000.0
            self._record(mirror, request_id, body, None, latency, f"TimeoutError: upstream "
                         f"took longer than {self.settings.timeout_s:g} s", request)  # fmt: skip
            return web.Response(status=504, text="upstream timed out\n")
        except aiohttp.ClientError as exc:
            self.counters.upstream_unreachable += 1
            latency = (time.perf_counter() - started) * 1000.0
            self._record(mirror, request_id, body, None, latency,
                         f"UpstreamError: {describe(exc)}", request)  # fmt: skip
            return web.Response(status=502, text="upstream unreachable\n")
        error = None
        if status >= 500:
            self.counters.upstream_errors += 1
            error = f"HTTP {status} from upstream"
        if overflow and mirror:
            self.counters.not_mirrored_size += 1
            mirror = False
        self._record(mirror, request_id, body, bytes(kept), latency, error, request, status)
        return answer

    def _record(
        self, mirror: bool, request_id: str, body: bytes, answer: bytes | None, latency: float,
        error: str | None, request: Any, status: int | None = None,
    ) -> None:  # fmt: skip
        if not mirror:
            return
        if len(body) > self.server.max_mirror_bytes:
            self.counters.not_mirrored_size += 1
            return
        try:
            inputs = at_path(_json(body), self.settings.inputs_path)
            if not isinstance(inputs, dict):
                inputs = {"body": inputs}
            output = None
            if answer is not None and error is None:
                try:
                    output = at_path(_json(answer), self.settings.outputs_path)
                except (orjson.JSONDecodeError, KeyError, IndexError) as exc:
                    what = "not JSON" if isinstance(exc, orjson.JSONDecodeError) else (
                        f"has no {self.settings.outputs_path!r}")  # fmt: skip
                    error = f"ResponseError: HTTP {status} body {what}"
            if error is None and status is not None and status >= 400:
                error = f"HTTP {status} from upstream"
        except (orjson.JSONDecodeError, KeyError, IndexError) as exc:
            # a request the candidates cannot read: not mirrored, counted
            self.counters.not_mirrored_tap += 1
            self.mirror.counters.last_error = f"request body: {describe(exc)}"
            return
        unit = request.headers.get(self.settings.unit_id_header) if (
            self.settings.unit_id_header) else None  # fmt: skip
        ok = self.mirror.record(
            experiment=self.exp.name, request_id=request_id, inputs=inputs, output=output,
            latency_ms=latency, model=self.exp.production_model, unit_id=unit, error=error,
        )  # fmt: skip
        if ok:
            self.counters.mirrored += 1
        else:
            self.counters.not_mirrored_tap += 1


def make_app(proxy: Proxy) -> Any:
    """The aiohttp application: ``/-/shadowline/metrics`` and ``/-/shadowline/healthz``
    are the proxy's own; every other path is forwarded."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    from shadowline.metrics import counters_registry

    registry = counters_registry(
        ("shadowline_proxy", "proxy", proxy), ("shadowline_proxy_tap", "tap", proxy.mirror)
    )

    async def own(request: web.Request) -> web.Response:
        if request.match_info["what"] == "metrics":
            return web.Response(body=generate_latest(registry),
                                headers={"Content-Type": CONTENT_TYPE_LATEST})  # fmt: skip
        return web.json_response({"status": "ok", "upstream": proxy.upstream})

    app = web.Application(client_max_size=proxy.server.max_body_bytes)
    app.router.add_route("GET", "/-/shadowline/{what:metrics|healthz}", own)
    app.router.add_route("*", "/{tail:.*}", proxy.handle)

    async def on_startup(_app: web.Application) -> None:
        await proxy.start()

    async def on_cleanup(_app: web.Application) -> None:
        await proxy.close()
        await asyncio.get_running_loop().run_in_executor(None, proxy.mirror.close)

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app


def run(config: Config, experiment: str, host: str | None = None, port: int | None = None) -> None:
    """Serve until interrupted (``shadowline proxy``)."""
    proxy = Proxy(config, experiment)
    h = host or config.proxy.host
    p = config.proxy.port if port is None else port
    print(f"proxy on http://{h}:{p}/ -> {proxy.upstream} (experiment {experiment})", flush=True)
    # The tap's sender thread shares the interpreter with the event loop: a short switch
    # interval keeps it from holding a request up to 5 ms (Python's default).
    sys.setswitchinterval(0.0002)
    loop = None
    try:  # libuv's loop: about half the added latency of asyncio's (bench/proxy_overhead.py)
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:
        pass
    web.run_app(make_app(proxy), host=h, port=p, print=None, access_log=None,
                handle_signals=True, shutdown_timeout=5, loop=loop)  # fmt: skip
