"""What `shadowline proxy` adds to a request, measured side by side in one run.

An upstream model endpoint runs in a process of its own: a small aiohttp app answering
a V1 prediction, or with ``--upstream go`` the same answer from bench/upstream in Go,
cheap enough that at thousands of requests per second it is not what saturates.
`shadowline proxy` runs in front of it, one process per engine (``--engines python,go``:
aiohttp, and the compiled Go data path), each mirroring every request to the real
Kafka broker into its own topics. vegeta (built from the Go module proxy into
.shadowline/tools/) sends the same open-loop, constant-rate load to the upstream
directly, then through each proxy in turn, at each rate; after each attack the next
waits until the process attacked is idle again. Reported: p50 and p99 of each, their
difference (what the proxy adds), the share of answers that were 2xx, the proxy's
resident memory before and after each run and its CPU time per request (from /proc,
user + system). ``--engines forward:nethttp,forward:pooled,forward:fasthttp`` adds bare
HTTP forwarders (bench/forwarders, nothing mirrored) to the same run: what each HTTP
stack alone costs.

    .venv/bin/shadowline kafka up -c .ci/shadowline-ci.toml
    .venv/bin/python bench/proxy_overhead.py --rates 1000,5000 --duration 20
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from throughput import cpu_seconds  # noqa: E402  the same counter as the other benches

TOOLS = ROOT / ".shadowline" / "tools"
VEGETA = "github.com/tsenart/vegeta/v12@v12.13.0"

UPSTREAM = """
import sys
from aiohttp import web
import orjson

async def predict(request):
    doc = orjson.loads(await request.read())
    preds = [int(sum(r) > 0) for r in doc["instances"]]
    return web.Response(body=orjson.dumps({"predictions": preds}), content_type="application/json")

app = web.Application()
app.router.add_post("/v1/models/m:predict", predict)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


def vegeta() -> str:
    exe = TOOLS / "vegeta"
    if not exe.exists():
        TOOLS.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "GOBIN": str(TOOLS), "GOFLAGS": "-mod=mod"}
        subprocess.run(["go", "install", VEGETA], check=True, env=env)
    return str(exe)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1)  # noqa: S310  loopback
            return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"{url} did not answer in {timeout:.0f} s")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def settle(pid: int, timeout: float = 60.0) -> None:
    """Wait until a proxy has worked off what an attack left it (a saturated proxy goes
    on answering timed-out requests and mirroring them): under 5 % of a core for 0.5 s,
    so the next measurement does not share the machine with it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = cpu_seconds(pid)
        time.sleep(0.5)
        if cpu_seconds(pid) - before < 0.025:
            return


def attack(exe: str, url: str, rate: int, duration: float, body: Path) -> dict[str, Any]:
    target = f"POST {url}\nContent-Type: application/json\n@{body}\n"
    attack = subprocess.run(
        [exe, "attack", f"-rate={rate}/s", f"-duration={duration}s", "-timeout=10s",
         "-keepalive=true", "-workers=64", "-max-workers=512"],
        input=target.encode(), capture_output=True, check=True,
    )  # fmt: skip
    report = subprocess.run([exe, "report", "-type=json"], input=attack.stdout,
                            capture_output=True, check=True)  # fmt: skip
    doc = json.loads(report.stdout)
    lat = doc["latencies"]
    return {
        "p50_ms": lat["50th"] / 1e6,
        "p99_ms": lat["99th"] / 1e6,
        "max_ms": lat["max"] / 1e6,
        "requests": doc["requests"],
        "achieved_rate": round(doc["rate"], 1),
        "ok_share": doc["success"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="1000,5000")
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=2, help="direct/proxy alternations")
    parser.add_argument("--bootstrap", default=os.environ.get("SHADOWLINE_TEST_BOOTSTRAP",
                                                              "127.0.0.1:29092"))  # fmt: skip
    parser.add_argument("--engines", default="python,go",
                        help="proxy engines to measure; go:N sets proxy.go_procs = N; "
                        "forward:nethttp|pooled|fasthttp is a bare HTTP stack from "
                        "bench/forwarders, nothing mirrored")  # fmt: skip
    parser.add_argument("--upstream", choices=("python", "go"), default="python",
                        help="the model endpoint: aiohttp, or a Go one (bench/upstream) "
                        "cheap enough not to saturate first")  # fmt: skip
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    engines = args.engines.split(",")
    exe = vegeta()
    work = Path(tempfile.mkdtemp(prefix="proxy-bench-"))
    up_port = free_port()
    (work / "upstream.py").write_text(UPSTREAM)
    (work / "body.json").write_text(json.dumps({"instances": [[0.5, -1.25, 3.0, 0.75]]}))
    py = sys.executable
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ports, procs = {}, {}
    if args.upstream == "go":
        up_exe = TOOLS / "bench-upstream"
        subprocess.run(["go", "build", "-o", str(up_exe), "."], cwd=ROOT / "bench" / "upstream",
                       check=True, env={**os.environ, "GOWORK": "off"})  # fmt: skip
        upstream = subprocess.Popen([str(up_exe), str(up_port)])
    else:
        upstream = subprocess.Popen([py, str(work / "upstream.py"), str(up_port)], env=env)
    forward_exe = TOOLS / "bench-forwarders"
    if any(e.startswith("forward:") for e in engines):
        subprocess.run(["go", "build", "-o", str(forward_exe), "."],
                       cwd=ROOT / "bench" / "forwarders", check=True,
                       env={**os.environ, "GOWORK": "off"})  # fmt: skip
    for engine in engines:
        ports[engine] = free_port()
        if engine.startswith("forward:"):  # a bare HTTP stack, nothing mirrored
            procs[engine] = subprocess.Popen([str(forward_exe), engine.split(":")[1],
                                              f"127.0.0.1:{ports[engine]}",
                                              f"127.0.0.1:{up_port}"])  # fmt: skip
            continue
        cfg = work / f"{engine.replace(':', '-')}.toml"
        cfg.write_text(f"""
[kafka]
bootstrap_servers = "{args.bootstrap}"
namespace = "bench{int(time.time())}{engine.replace(":", "-")}."
partitions = 3

[proxy]
port = {ports[engine]}
engine = "{engine.split(":")[0]}"
{f"go_procs = {engine.split(':')[1]}" if ":" in engine else ""}

[[experiments]]
name = "bench"
production_model = "prod"

[experiments.proxy]
upstream = "http://127.0.0.1:{up_port}"
outputs_path = "predictions.0"

[[experiments.candidates]]
name = "c"
model = "tests.fixtures.models:EchoModel"
""")
        subprocess.run([py, "-m", "shadowline", "topics", "create", "-c", str(cfg)],
                       check=True, env=env, capture_output=True)  # fmt: skip
        if engine.startswith("go"):
            subprocess.run([py, "-m", "shadowline", "proxy-build"], check=True, env=env,
                           capture_output=True)  # fmt: skip
        procs[engine] = subprocess.Popen(
            [py, "-m", "shadowline", "proxy", "-c", str(cfg), "-e", "bench"],
            env=env, stdout=subprocess.DEVNULL,
        )  # fmt: skip
    results: list[dict[str, Any]] = []
    counters: dict[str, dict[str, int]] = {}
    try:
        wait_http(f"http://127.0.0.1:{up_port}/")
        route = "/v1/models/m:predict"
        direct_url = f"http://127.0.0.1:{up_port}{route}"
        urls = {e: f"http://127.0.0.1:{ports[e]}{route}" for e in engines}
        for engine in engines:
            wait_http(f"http://127.0.0.1:{ports[engine]}/-/shadowline/healthz")
            # (a bare forwarder answers the health path with the upstream's 404)
            attack(exe, urls[engine], 200, 3, work / "body.json")  # warm both paths
        for rate in (int(r) for r in args.rates.split(",")):
            for rnd in range(args.rounds):
                direct = attack(exe, direct_url, rate, args.duration, work / "body.json")
                settle(upstream.pid)
                for engine in engines:
                    pid = procs[engine].pid
                    before, cpu = rss_mb(pid), cpu_seconds(pid)
                    via = attack(exe, urls[engine], rate, args.duration, work / "body.json")
                    cpu, after = cpu_seconds(pid) - cpu, rss_mb(pid)
                    settle(pid)
                    results.append({
                        "engine": engine, "rate": rate, "round": rnd, "direct": direct,
                        "proxy": via,
                        "added_p50_ms": round(via["p50_ms"] - direct["p50_ms"], 3),
                        "added_p99_ms": round(via["p99_ms"] - direct["p99_ms"], 3),
                        "proxy_rss_mb": [round(before, 1), round(after, 1)],
                        "proxy_cpu_us_per_request": round(1e6 * cpu / max(via["requests"], 1)),
                    })  # fmt: skip
        for engine in (e for e in engines if not e.startswith("forward:")):
            metrics = (
                urllib.request.urlopen(  # noqa: S310  loopback
                    f"http://127.0.0.1:{ports[engine]}/-/shadowline/metrics", timeout=5
                )
                .read()
                .decode()
            )
            counters[engine] = {
                line.split()[0].removeprefix("shadowline_proxy_"): int(float(line.split()[1]))
                for line in metrics.splitlines() if line and not line.startswith("#")
            }  # fmt: skip
    finally:
        for proc in (*procs.values(), upstream):
            proc.terminate()
            proc.wait(15)
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps({"upstream": args.upstream, "runs": results,
                          "proxy_counters": counters}, indent=2))  # fmt: skip
        return
    print(f"{'engine':>16} {'rate':>6} {'rnd':>3} {'direct p50':>10} {'p99':>8} {'proxy p50':>10} "
          f"{'p99':>8} {'added p50':>9} {'p99':>8} {'ok':>6} {'CPU us/req':>10} "
          f"{'proxy RSS MB':>14}")  # fmt: skip
    for r in results:
        d, p = r["direct"], r["proxy"]
        print(f"{r['engine']:>16} {r['rate']:>6} {r['round']:>3} {d['p50_ms']:>10.3f} "
              f"{d['p99_ms']:>8.3f} {p['p50_ms']:>10.3f} {p['p99_ms']:>8.3f} "
              f"{r['added_p50_ms']:>9.3f} {r['added_p99_ms']:>8.3f} {p['ok_share']:>6.3f} "
              f"{r['proxy_cpu_us_per_request']:>10} "
              f"{r['proxy_rss_mb'][0]:>6.1f}->{r['proxy_rss_mb'][1]:<6.1f}")  # fmt: skip
    keys = ("forwarded_total", "mirrored_total", "tap_delivered_total", "tap_failed_total",
            "tap_dropped_queue_full_total")  # fmt: skip
    for engine in counters:
        print(f"{engine} proxy counters:", {k: counters[engine].get(k) for k in keys})


if __name__ == "__main__":
    main()
