"""A real `edgescale serve` subprocess on a free loopback port, for the tests and the bench."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from typing import Sequence

READY_TIMEOUT_S = 180


class ServerProcess:
    """``edgescale serve --port 0 ARGS``; waits for the ready line; stderr is collected."""

    def __init__(self, args: Sequence[str], *, env: dict[str, str] | None = None) -> None:
        cmd = [sys.executable, "-m", "edgescale.cli", "serve", "--host", "127.0.0.1", "--port", "0", *args]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env={**os.environ, **(env or {})})
        self.lines: list[str] = []
        self._ready = threading.Event()
        self.port = 0
        threading.Thread(target=self._drain, daemon=True).start()
        self._ready.wait(READY_TIMEOUT_S)
        if not any(line.startswith("ready:") for line in self.lines) or self.proc.poll() is not None:
            self.stop(signal.SIGKILL)
            raise RuntimeError("the server did not start:\n" + "".join(self.lines[-20:]))

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
            if m:
                self.port = int(m.group(1))
            if line.startswith("ready:") or line.startswith("error:"):
                self._ready.set()
        self._ready.set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def wait_for_line(self, pattern: str, timeout: float = 30) -> str | None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for line in list(self.lines):
                if re.search(pattern, line):
                    return line
            time.sleep(0.05)
        return None


def metric(text: str, name: str) -> float:
    """A sample's value from Prometheus text (the first sample of that name)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    raise KeyError(name)
