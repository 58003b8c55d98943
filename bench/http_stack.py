"""Benchmark: which HTTP server stack the shadowline surfaces stand on, by measurement.

    .venv/bin/python bench/http_stack.py [--rates 1000,4000] [--duration 10] [--slow 200]

Each candidate serves the same small answer (a JSON health document, as the gate
server's ``/healthz``) from its own process on loopback, one after the other in one
run: the standard library's ``ThreadingHTTPServer`` bounded to 32 connection threads
(shadowline's base until this benchmark), a plain aiohttp low-level server, uvicorn
(h11) when it is installed, and ``shadowline.httpserve`` itself (the base every surface
uses). For each: latency at open-loop constant rates from vegeta (built from the Go
module proxy, as in bench/proxy_overhead.py); what a well-behaved client gets while
``--slow`` clients hold connections open with half-sent requests (slowloris); and the
server's RSS idle and while those connections are held. Writes
bench/results/http_stack.json and .md.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from proxy_overhead import free_port, rss_mb, vegeta, wait_http  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results"
BODY = b'{"status":"ok"}'

STDLIB = """
import sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Bounded(ThreadingHTTPServer):
    daemon_threads = True
    def __init__(self, *a):
        super().__init__(*a)
        self.slots = threading.BoundedSemaphore(32)
    def process_request(self, request, client_address):
        if not self.slots.acquire(blocking=False):
            request.sendall(b"HTTP/1.1 503 Service Unavailable\\r\\nContent-Length: 0\\r\\n\\r\\n")
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)
    def handle_error(self, request, client_address):
        pass  # vegeta's closed connections at the end of a rate: not this bench's output
    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30
    def log_message(self, *a):
        pass
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "15")
        self.end_headers()
        self.wfile.write(b'{"status":"ok"}')

Bounded(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""

AIOHTTP = """
import asyncio, sys
from aiohttp import web

async def handle(request):
    return web.Response(body=b'{"status":"ok"}', content_type="application/json")

async def main():
    server = web.Server(handle, access_log=None)
    await asyncio.get_running_loop().create_server(server, "127.0.0.1", int(sys.argv[1]))
    await asyncio.Event().wait()

asyncio.run(main())
"""

UVICORN = """
import sys, uvicorn

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b'{"status":"ok"}'})

uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="error",
            access_log=False, http="h11", loop="asyncio")
"""

SHADOWLINE = """
import sys
from shadowline.httpserve import BoundedServer, HardenedHandler

class H(HardenedHandler):
    def route(self):
        self.answer(200, b'{"status":"ok"}', "application/json")

BoundedServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def candidates() -> dict[str, str]:
    out = {"stdlib (bounded threads)": STDLIB, "aiohttp": AIOHTTP}
    try:
        import uvicorn  # noqa: F401
    except ImportError:
        print("uvicorn is not installed: measured without it", file=sys.stderr)
    else:
        out["uvicorn (h11)"] = UVICORN
    out["shadowline.httpserve"] = SHADOWLINE
    return out


def attack(exe: str, url: str, rate: int, duration: float) -> dict[str, Any]:
    run = subprocess.run(
        [exe, "attack", f"-rate={rate}/s", f"-duration={duration}s", "-timeout=10s",
         "-keepalive=true", "-workers=32", "-max-workers=256"],
        input=f"GET {url}\n".encode(), capture_output=True, check=True,
    )  # fmt: skip
    report = subprocess.run(
        [exe, "report", "-type=json"], input=run.stdout, capture_output=True, check=True
    )
    doc = json.loads(report.stdout)
    lat = doc["latencies"]
    return {
        "rate": rate,
        "p50_ms": round(lat["50th"] / 1e6, 3),
        "p99_ms": round(lat["99th"] / 1e6, 3),
        "ok_share": round(doc["success"], 4),
    }


def slowloris(port: int, pid: int, held: int) -> dict[str, Any]:
    """``held`` connections each send half a request and stay silent; meanwhile 20
    ordinary requests, one after another, each with its own connection."""
    socks = []
    for _ in range(held):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        socks.append(s)
    time.sleep(1.0)
    rss = rss_mb(pid)
    ok, worst = 0, 0.0
    for _ in range(20):
        t0 = time.perf_counter()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:  # noqa: S310
                ok += r.read() == BODY
        except OSError:
            pass
        worst = max(worst, time.perf_counter() - t0)
    for s in socks:
        s.close()
    return {"held": held, "ok_of_20": ok, "worst_ms": round(worst * 1000, 1), "rss_mb": rss}


def measure(name: str, code: str, exe: str, rates: list[int], duration: float, held: int,
            tmp: Path) -> dict[str, Any]:  # fmt: skip
    script = tmp / f"server{abs(hash(name))}.py"
    script.write_text(code)
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(script), str(port)], cwd=ROOT)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        res: dict[str, Any] = {"stack": name, "rss_idle_mb": round(rss_mb(proc.pid), 1)}
        # slow clients first, on a fresh server: after an overload the backlog of
        # vegeta's connections would still be draining
        res["slowloris"] = slowloris(port, proc.pid, held)
        res["rates"] = [attack(exe, f"http://127.0.0.1:{port}/healthz", r, duration)
                        for r in rates]  # fmt: skip
        res["alive_after"] = urllib.request.urlopen(  # noqa: S310
            f"http://127.0.0.1:{port}/healthz", timeout=5
        ).status
        return res
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="1000,4000")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--slow", type=int, default=200, help="slowloris connections held")
    args = parser.parse_args()
    rates = [int(r) for r in args.rates.split(",")]
    exe = vegeta()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, code in candidates().items():
            res = measure(name, code, exe, rates, args.duration, args.slow, Path(tmp))
            print(json.dumps(res), flush=True)
            results.append(res)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "http_stack.json").write_text(json.dumps(results, indent=2))
    head = "| stack | " + " | ".join(f"{r:,}/s p50 / p99 ms (ok)" for r in rates)
    lines = [
        head + f" | {args.slow} slowloris: ordinary requests answered | worst ms "
        "| RSS MB idle / held |",
        "|---" * (len(rates) + 4) + "|",
    ]
    for r in results:
        cells = [f"{x['p50_ms']:.2f} / {x['p99_ms']:.2f} ({x['ok_share']:.0%})" for x in r["rates"]]
        s = r["slowloris"]
        lines.append(
            f"| {r['stack']} | " + " | ".join(cells) + f" | {s['ok_of_20']} of 20 | "
            f"{s['worst_ms']:,.0f} | {r['rss_idle_mb']} / {s['rss_mb']:.1f} |"
        )  # fmt: skip
    (OUT / "http_stack.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
