"""Run the pipeline's components as child processes (``shadowline up``, the demo, tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from shadowline.errors import ShadowlineError

COMPONENTS = ("sink", "joiner", "worker")


class Pipeline:
    """Worker, joiner and sink processes for one config file."""

    def __init__(
        self,
        config_path: str | os.PathLike[str],
        components: tuple[str, ...] = COMPONENTS,
        log_dir: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.config_path = str(config_path)
        self.components = components
        self.log_dir = log_dir
        self.env = env
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self) -> None:
        """Start every component (the sink first: it owns the warehouse)."""
        for name in self.components:
            self.start_one(name)

    def start_one(self, name: str, component: str | None = None) -> subprocess.Popen[bytes]:
        """Start (or restart) one process called ``name`` running ``component`` (by
        default the component called ``name``; a second joiner is e.g. ``joiner-2``)."""
        component = component or name.split("-", 1)[0]
        cmd = [sys.executable, "-m", "shadowline", "run", component, "-c", self.config_path]
        out = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            out = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115  owned by the child
        env = dict(os.environ)
        if self.env:
            env.update(self.env)
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT if out else None, env=env)
        self.procs[name] = proc
        return proc

    def check(self) -> None:
        """Raise if a component died."""
        for name, proc in self.procs.items():
            code = proc.poll()
            if code is not None:
                if self.log_dir is None:  # its output went to this terminal
                    raise ShadowlineError(f"{name} exited with code {code} (its log is above)")
                log = self.log_dir / f"{name}.log"
                raise ShadowlineError(
                    f"{name} exited with code {code}; the last lines of {log}:\n"
                    + "\n".join(f"  {line}" for line in _tail(log, 15))
                )

    def kill(self, name: str) -> None:
        """SIGKILL one component (fault tests); it is no longer watched until restarted."""
        proc = self.procs.pop(name)
        proc.kill()
        proc.wait()

    def terminate(self, name: str, timeout: float = 30.0) -> int:
        """SIGTERM one process and wait for it (a graceful leave); returns its exit code."""
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()

    def stop(self, timeout: float = 20.0) -> dict[str, int | None]:
        """SIGTERM every component, wait, then SIGKILL stragglers; returns exit codes."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        codes: dict[str, int | None] = {}
        for name, proc in self.procs.items():
            try:
                codes[name] = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = proc.wait()
        return codes

    def wait(self) -> None:
        """Block until a component exits or SIGINT/SIGTERM arrives, then stop all."""
        stopping = False

        def _stop(*_: object) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, _stop)
        signal.signal(signal.SIGTERM, _stop)
        try:
            while not stopping:
                self.check()
                time.sleep(0.2)
        finally:
            self.stop()


def _tail(path: Path, lines: int) -> list[str]:
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 16_384))
            text = f.read().decode("utf-8", "replace")
    except OSError as exc:
        return [f"(cannot read it: {exc})"]
    return [line[:300] for line in text.splitlines()[-lines:]] or ["(empty)"]
