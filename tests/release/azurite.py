"""Azurite's blob service (the Azure Storage emulator from npm; scripts/setup-azurite installs it) on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.server import free_port

REPO = Path(__file__).resolve().parents[2]
LOCAL_BINARY = REPO / ".tools" / "azurite" / "node_modules" / ".bin" / "azurite-blob"
# Azurite's fixed development account (public, documented; not a secret).
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def require_azurite() -> str:
    if os.access(LOCAL_BINARY, os.X_OK):
        return str(LOCAL_BINARY)
    found = shutil.which("azurite-blob")
    if found:
        return found
    reason = "Azurite not installed: run scripts/setup-azurite (npm install azurite into .tools/)"
    if os.environ.get("CI"):
        pytest.fail(f"CI must not skip: {reason}")
    pytest.skip(reason)


class Azurite:
    def __init__(self, workdir: Path) -> None:
        self.binary = require_azurite()
        self.workdir = workdir
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}/{ACCOUNT}"
        self.connection_string = ";".join(
            ["DefaultEndpointsProtocol=http", f"AccountName={ACCOUNT}", f"AccountKey={ACCOUNT_KEY}",
             f"BlobEndpoint={self.endpoint}"]
        )  # fmt: skip
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> Azurite:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._log = (self.workdir / "azurite.log").open("wb")
        command = [self.binary, "--blobHost", "127.0.0.1", "--blobPort", str(self.port)]
        command += ["--location", str(self.workdir), "--skipApiVersionCheck", "--disableTelemetry", "--silent"]
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, cwd=self.workdir)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"azurite exited with {self.process.returncode}: {self.logs()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"azurite not listening after {timeout}s: {self.logs()}")

    def logs(self) -> str:
        path = self.workdir / "azurite.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self._log.close()
        self.process = None
