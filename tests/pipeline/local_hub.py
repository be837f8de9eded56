"""A stand-in IoT Hub for scripts/pipeline-local, on 127.0.0.1.

It is tests/release/hub_server.py's HubServer answering the two service calls the pipeline makes: layered
deployments (PUT /configurations/{id}) and the module-twin query (POST /devices/query). Its devices are
simulated: each takes the models of the highest-priority layered deployments whose target condition matches
its tags, and reports a release active only after checking it as a device does (parse the release, verify the
ed25519 signature against the trusted keys, fetch the file:// URI and compare the sha256); otherwise it
reports it failed with the reason.

    python -m tests.pipeline.local_hub --url-file FILE --trusted-keys PEM
"""

from __future__ import annotations

import argparse
import hashlib
import re
import signal
import sys
import threading
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from edge_module.release import ReleaseError, load_public_keys, parse_release, verify_signature
from tests.release.hub_server import Answer, Captured, HubServer

MODULE = "edge-inference"
DEVICES = {
    "canary-gw-1": {"ring": "canary", "environment": "prod"},
    "plant-gw-1": {"environment": "prod"},
    "plant-gw-2": {"environment": "prod"},
}
CONDITION = re.compile(r"^tags\.(\w+)\s*=\s*'([^']*)'$")


def matches(condition: str, tags: dict[str, str]) -> bool:
    """The subset of IoT Hub's target conditions the pipeline uses: ``tags.<name>='<value>'``."""
    match = CONDITION.fullmatch(condition.strip())
    return match is not None and tags.get(match.group(1)) == match.group(2)


class SimulatedFleet:
    def __init__(self, trusted_keys: list[Any]) -> None:
        self.trusted_keys = trusted_keys
        self.configurations: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()

    def respond(self, request: Captured) -> Answer:
        with self.lock:
            if request.method == "PUT" and request.path.startswith("/configurations/"):
                self.configurations[request.path.rsplit("/", 1)[1]] = request.body
                return Answer(200, {**request.body, "etag": "MQ=="})
            if request.method == "POST" and request.path == "/devices/query":
                return Answer(200, [self.module_twin(device, tags) for device, tags in DEVICES.items()])
        return Answer(404, {"Message": f"the stand-in hub does not answer {request.method} {request.path}"})

    def desired_models(self, tags: dict[str, str]) -> dict[str, Any]:
        applicable = [c for c in self.configurations.values() if matches(c.get("targetCondition", ""), tags)]
        models: dict[str, Any] = {}
        for configuration in sorted(applicable, key=lambda c: int(c.get("priority", 0))):
            content = configuration["content"]["modulesContent"].get(MODULE, {})
            models.update(content.get("properties.desired.models", {}))
        return models

    def module_twin(self, device: str, tags: dict[str, str]) -> dict[str, Any]:
        desired = self.desired_models(tags)
        reported = {name: self.apply(name, block) for name, block in desired.items()}
        return {
            "deviceId": device,
            "moduleId": MODULE,
            "tags": tags,
            "properties": {"desired": {"models": desired}, "reported": {"models": reported}},
        }

    def apply(self, name: str, block: Any) -> dict[str, Any]:
        try:
            release = parse_release(name, block)
            verify_signature(release, self.trusted_keys)
            uri = urllib.parse.urlsplit(release.uri)
            if uri.scheme != "file":
                raise ReleaseError(f"the stand-in devices fetch file:// URIs only, got {release.uri}")
            digest = hashlib.sha256(Path(urllib.request.url2pathname(uri.path)).read_bytes()).hexdigest()
            if digest != release.sha256:
                raise ReleaseError(f"sha256 mismatch: expected {release.sha256}, got {digest}")
        except (ReleaseError, OSError) as error:
            version = block.get("version") if isinstance(block, dict) else None
            return {"state": "failed", "desiredVersion": version, "error": str(error)}
        return {
            "state": "active",
            "desiredVersion": release.version,
            "activeVersion": release.version,
            "sha256": release.sha256,
        }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.pipeline.local_hub", description=__doc__)
    parser.add_argument("--url-file", type=Path, required=True, help="where to write the hub's URL once it listens")
    parser.add_argument("--trusted-keys", type=Path, required=True, help="PEM public keys the devices trust")
    args = parser.parse_args(argv)
    keys = load_public_keys(args.trusted_keys.read_text())
    if not keys:
        parser.error(f"no ed25519 public key in {args.trusted_keys}")
    fleet = SimulatedFleet(keys)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with HubServer(fleet.respond) as server:
        args.url_file.write_text(server.url + "\n")
        while not stop.wait(3600):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
