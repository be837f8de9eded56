"""Run the real module (``python -m edge_module``) as a subprocess on 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PortTaken(RuntimeError):
    """The free port we picked was taken by someone else before the module bound it."""


class ModuleProcess:
    BIND_ATTEMPTS = 3

    def __init__(
        self,
        model_dir: Path,
        env: dict[str, str] | None = None,
        args: Sequence[str] = (),
        ca_file: Path | None = None,
        url_host: str = "127.0.0.1",
        prefix: Sequence[str] = (),
    ) -> None:
        # With ca_file the module serves HTTPS (EDGE_TLS_* in env) and clients verify against that CA.
        self.verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=str(ca_file)) if ca_file else True
        self.scheme = "https" if ca_file else "http"
        self.model_dir = model_dir
        self.url_host = url_host  # the name clients use: HTTPS checks it against the certificate
        self.env = {**os.environ, "EDGE_HOST": "127.0.0.1", "EDGE_MODEL_DIR": str(model_dir), **(env or {})}
        self.args = list(args)
        self.prefix = list(prefix)  # a wrapper command, e.g. one that enters a cgroup first
        self.process: subprocess.Popen[bytes] | None = None
        self._pick_port()

    def _pick_port(self) -> None:
        self.port = free_port()
        self.url = f"{self.scheme}://{self.url_host}:{self.port}"
        self.env["EDGE_PORT"] = str(self.port)
        self.log_path = self.model_dir.parent / f"module-{self.port}.log"

    def start(self, wait_ready: bool = True, timeout: float = 30.0) -> ModuleProcess:
        # free_port() releases the port before the module binds it: on a busy machine another process may take
        # it in between. The module then exits with "address already in use", and we try another port.
        for attempt in range(self.BIND_ATTEMPTS):
            self._log = self.log_path.open("wb")
            self.process = subprocess.Popen(
                [*self.prefix, sys.executable, "-m", "edge_module", *self.args],
                env=self.env,
                stdout=self._log,
                stderr=subprocess.STDOUT,
            )
            try:
                self.wait(wait_ready, timeout)
                return self
            except PortTaken:
                self.stop()
                if attempt + 1 == self.BIND_ATTEMPTS:
                    raise
                self._pick_port()
            except BaseException:
                self.stop()
                raise
        raise AssertionError("unreachable")

    def wait(self, ready: bool, timeout: float) -> None:
        path = "/v2/health/ready" if ready else "/v2/health/live"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                if "address already in use" in self.logs():
                    raise PortTaken(f"port {self.port}: {self.logs()[-500:]}")
                raise RuntimeError(f"module exited with {self.process.returncode}: {self.logs()}")
            try:
                # Another process may hold the port (free_port's race): only our own listener counts.
                if httpx.get(self.url + path, timeout=1.0, verify=self.verify).status_code == 200 and self._listens():
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"module not {'ready' if ready else 'live'} after {timeout}s: {self.logs()}")

    def _listens(self) -> bool:
        """Whether the listening socket on our port is this process's (True where /proc cannot tell)."""
        assert self.process is not None
        inodes: set[str] = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            try:
                rows = Path(table).read_text().splitlines()[1:]
            except OSError:
                return True
            for row in rows:
                fields = row.split()
                if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == self.port:
                    inodes.add(fields[9])
        try:
            descriptors = list(Path(f"/proc/{self.process.pid}/fd").iterdir())
        except OSError:
            # /proc was readable above, so our process is gone or going (it lost the port and exits): not ours.
            return False
        links = set()
        for descriptor in descriptors:
            with contextlib.suppress(OSError):  # closed while we looked
                links.add(os.readlink(descriptor))
        return any(f"socket:[{inode}]" in links for inode in inodes)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 10.0) -> int:
        if self.process is None:
            return 0
        self.process.terminate()
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self._log.close()
        self.process = None
        return code

    def kill(self) -> int:
        """SIGKILL: no shutdown code runs, as when the device loses power or the OOM killer strikes."""
        if self.process is None:
            return 0
        self.process.kill()
        code = self.process.wait()
        self._log.close()
        self.process = None
        return code

    def __enter__(self) -> ModuleProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
