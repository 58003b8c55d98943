"""The local single-node Kafka broker (KRaft) for development, tests and the demo.

Jars come from Maven Central through ``deploy/kafka/pom.xml`` (first run only);
storage and logs live under the config's ``kafka.local_data_dir``. The broker
listens on the host and port of ``kafka.bootstrap_servers`` (loopback).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import struct
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from shadowline.config import Config
from shadowline.errors import BrokerError
from shadowline.kafka import ping
from shadowline.resources import data_dir

KAFKA_DIR = data_dir("shadowline.kafka_broker", "pom.xml")


def _lib_dir() -> Path:
    # The jars go to a per-user cache, never into the installed package; one folder per
    # POM, so a POM that changes versions fetches its own jars.
    digest = hashlib.sha256((KAFKA_DIR / "pom.xml").read_bytes()).hexdigest()[:12]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return Path(os.environ.get("SHADOWLINE_KAFKA_LIB") or cache / "shadowline" / f"kafka-{digest}")


LIB_DIR = _lib_dir()


@dataclass(frozen=True)
class LocalBroker:
    """Paths and ports of the local broker for one config."""

    data_dir: Path
    host: str
    port: int
    controller_port: int

    @classmethod
    def from_config(cls, config: Config) -> LocalBroker:
        first = config.kafka.bootstrap_servers.split(",")[0].strip()
        host, _, port = first.rpartition(":")
        if not port.isdigit():
            raise BrokerError(f"kafka.bootstrap_servers {first!r} has no port")
        if host not in ("127.0.0.1", "localhost", "::1", "[::1]"):
            raise BrokerError(
                f"kafka.bootstrap_servers {first!r} is not on loopback; "
                "`shadowline kafka up` only runs a local broker"
            )
        return cls(
            data_dir=config.resolve_path(config.kafka.local_data_dir),
            host="127.0.0.1",
            port=int(port),
            controller_port=int(port) + 1,
        )

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "broker.pid"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "broker.log"

    def pid(self) -> int | None:
        """PID of the running broker started from this data directory, if any."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return pid
        cmdline = Path(f"/proc/{pid}/cmdline")
        if cmdline.exists() and b"kafka.Kafka" not in cmdline.read_bytes():
            return None
        return pid


def _need(tool: str, hint: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise BrokerError(f"{tool} not found on PATH: install {hint}")
    return path


def fetch_jars() -> None:
    """Download the broker's jars from Maven Central once."""
    if LIB_DIR.is_dir() and any(LIB_DIR.glob("kafka_2.13-*.jar")):
        return
    mvn = _need("mvn", "Maven 3 (Debian: apt-get install maven)")
    proc = subprocess.run(
        [
            mvn,
            "-q",
            "-B",
            "-f",
            str(KAFKA_DIR / "pom.xml"),
            f"-Dshadowline.lib={LIB_DIR}",
            "dependency:copy-dependencies",
        ],  # fmt: skip
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
        raise BrokerError("Maven could not fetch the Kafka jars:\n" + "\n".join(tail))


def _write_properties(b: LocalBroker, config: Config, extra: dict[str, str] | None = None) -> Path:
    props = b.data_dir / "server.properties"
    lines = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{b.host}:{b.controller_port}",
        "listeners": f"PLAINTEXT://{b.host}:{b.port},CONTROLLER://{b.host}:{b.controller_port}",
        "advertised.listeners": f"PLAINTEXT://{b.host}:{b.port}",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": str(b.data_dir / "logs"),
        "num.partitions": str(config.kafka.partitions),
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "10",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "true",
        "message.max.bytes": str(max(config.kafka.max_message_bytes + 1024, 4 * 1_048_576 + 1024)),
        "log.cleaner.backoff.ms": "5000",
    }
    lines.update(extra or {})
    props.write_text("".join(f"{k}={v}\n" for k, v in lines.items()))
    return props


def port_free(host: str, port: int) -> bool:
    """Whether a listener could bind ``host:port`` now (as Java binds: with SO_REUSEADDR,
    so a port in TIME_WAIT counts as free)."""
    import socket

    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def wait_ports_free(host: str, ports: tuple[int, ...], timeout: float) -> list[int]:
    """Wait up to ``timeout`` for every port to be free; returns those still taken."""
    deadline = time.monotonic() + timeout
    while True:
        taken = [p for p in ports if not port_free(host, p)]
        if not taken or time.monotonic() >= deadline:
            return taken
        time.sleep(0.1)


def listening(host: str, port: int, timeout: float = 0.5, source_port: int = 0) -> bool:
    """Whether something accepts connections on ``host:port``.

    A client connecting to a loopback port nobody listens on can be given that very
    port as its own source port (it is inside Linux's ephemeral range) and connect to
    itself; the socket then holds the port and the broker starting a moment later
    cannot bind it. So nothing pings the broker before this says it listens, and a
    connection that reached itself counts as nobody and is reset, not closed: a closed
    one would leave the port in TIME_WAIT for a minute, and a TIME_WAIT socket made
    without SO_REUSEADDR blocks even a listener that sets it (seen: the broker's
    "Address already in use" after a probe). ``source_port`` is for tests."""
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.settimeout(timeout)
        if source_port:
            s.bind((host, source_port))
        s.connect((host, port))
        if s.getsockname()[:2] == s.getpeername()[:2]:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return False
        return True
    except OSError:
        return False
    finally:
        s.close()


def _check_ports_free(b: LocalBroker) -> None:
    # A broker stopped a moment ago may still be closing its listeners (its command
    # line is gone before its sockets are): give it a few seconds, then name the port.
    taken = wait_ports_free(b.host, (b.port, b.controller_port), timeout=15.0)
    if taken:
        what = {b.port: "the broker", b.controller_port: "the broker's controller (port + 1)"}
        port = taken[0]
        raise BrokerError(
            f"{b.host}:{port}, needed by {what[port]}, is in use; "
            "choose another kafka.bootstrap_servers port"
        )


def up(
    config: Config, timeout: float = 90.0, extra_properties: dict[str, str] | None = None
) -> str:
    """Start the local broker unless one answers; return a one-line status.

    ``extra_properties`` are broker settings over the defaults (the TLS tests give the
    broker an SSL listener that asks for client certificates)."""
    if _is_loopback(config):
        local = LocalBroker.from_config(config)
        answering = listening(local.host, local.port) and ping(config.kafka, timeout=1.0)
    else:
        answering = ping(config.kafka, timeout=1.0)
    if answering:
        return f"kafka already answering at {config.kafka.bootstrap_servers}"
    b = LocalBroker.from_config(config)
    java = _need("java", "a Java 17+ runtime (Debian: apt-get install openjdk-17-jre-headless)")
    fetch_jars()
    b.data_dir.mkdir(parents=True, exist_ok=True)
    props = _write_properties(b, config, extra_properties)
    classpath = f"{LIB_DIR}/*"
    if not (b.data_dir / "logs" / "meta.properties").exists():
        fmt = subprocess.run(
            [java, "-cp", classpath, "kafka.tools.StorageTool", "format",
             "-t", str(uuid.uuid4().hex[:22]), "-c", str(props), "--ignore-formatted"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if fmt.returncode != 0:
            raise BrokerError(f"formatting Kafka storage failed: {fmt.stderr.strip()[-500:]}")
    _check_ports_free(b)
    with open(b.data_dir / "broker.out", "ab") as out:
        proc = subprocess.Popen(
            [java, "-Xms256m", "-Xmx1g", "-XX:+UseG1GC",
             f"-Dlog4j2.configurationFile={KAFKA_DIR / 'log4j2.properties'}",
             f"-Dshadowline.kafka.log={b.log_file}",
             "-cp", classpath, "kafka.Kafka", str(props)],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    b.pid_file.write_text(str(proc.pid))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BrokerError(
                f"Kafka exited with code {proc.returncode}; see {b.data_dir / 'broker.out'}"
            )
        if listening(b.host, b.port) and ping(config.kafka, timeout=1.0):
            return (
                f"kafka up at {config.kafka.bootstrap_servers} (pid {proc.pid}, data {b.data_dir})"
            )
        time.sleep(0.2)
    proc.kill()
    raise BrokerError(f"Kafka did not answer within {timeout:.0f}s; see {b.log_file}")


def down(config: Config, timeout: float = 30.0) -> str:
    """Stop the local broker started from this config's data directory."""
    b = LocalBroker.from_config(config)
    pid = b.pid()
    if pid is None:
        return "kafka is not running (no local broker started from this config)"
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if b.pid() is None:
            b.pid_file.unlink(missing_ok=True)
            # Done only when its ports are free: the next `kafka up` binds them at once.
            wait_ports_free(b.host, (b.port, b.controller_port), deadline - time.monotonic())
            return f"kafka stopped (pid {pid})"
        time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)
    b.pid_file.unlink(missing_ok=True)
    return f"kafka killed after {timeout:.0f}s (pid {pid})"


def status(config: Config) -> tuple[bool, str]:
    """(running, message) for the configured bootstrap servers."""
    answering = ping(config.kafka, timeout=2.0)
    b = LocalBroker.from_config(config) if _is_loopback(config) else None
    pid = b.pid() if b else None
    where = config.kafka.bootstrap_servers
    if answering:
        extra = f" (local broker pid {pid})" if pid else ""
        return True, f"kafka running at {where}{extra}"
    if pid:
        return False, f"local broker process {pid} exists but does not answer at {where}"
    return False, f"kafka not running at {where}"


def _is_loopback(config: Config) -> bool:
    first = config.kafka.bootstrap_servers.split(",")[0]
    return first.rsplit(":", 1)[0] in ("127.0.0.1", "localhost", "::1", "[::1]")
