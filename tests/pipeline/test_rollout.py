"""Rollouts against the stand-in IoT Hub, through the project's real IoT Hub client: ids and priorities,
ring by ring, superseding, resuming, failures, the registry aliases and rollback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloud.__main__ import main
from cloud.errors import ModelNotFound
from cloud.registry import LocalRegistry, RegistryEntry
from cloud.releases.errors import TemplateError
from cloud.releases.iothub import HubCredentials, IoTHubClient
from cloud.releases.keys import KeyPair, generate_key_pair, load_private_key
from cloud.releases.publish import publisher_for
from cloud.releases.signing import make_release
from cloud.rollout import naming
from cloud.rollout.aliases import PREVIOUS, PRODUCTION, promote_to_production, rollback_target
from cloud.rollout.deployer import Rollout, Waiting
from cloud.rollout.errors import NoPreviousRelease, RolloutError, RolloutFailed, RolloutTimeout
from cloud.rollout.plan import plan
from cloud.rollout.rollback import rollback
from edge_module.release import Release, load_public_keys
from tests.pipeline.local_hub import MODULE, StandInHub
from tests.release.hub_server import HubServer
from tests.support.models import iris_classifier

CANARY = "tags.ring='canary'"
FLEET = "tags.environment='prod'"
DEVICES = {
    "canary-1": {"ring": "canary", "environment": "prod"},
    "plant-1": {"environment": "prod"},
    "plant-2": {"environment": "prod"},
}


class Lab:
    """A registry with two versions of "iris" (different bytes), a signing key and a stand-in hub."""

    def __init__(self, tmp_path: Path, keys: KeyPair, client: IoTHubClient, server: HubServer) -> None:
        self.tmp_path, self.keys, self.client, self.server = tmp_path, keys, client, server
        self.registry = LocalRegistry(tmp_path / "registry")
        self.v1 = self.registry.register("iris", iris_classifier("1", n_estimators=5).onnx).entry
        self.v2 = self.registry.register("iris", iris_classifier("2", n_estimators=7).onnx).entry
        self.rollout = Rollout(client, module=MODULE, waiting=Waiting(timeout_seconds=5, poll_seconds=0.05))

    def release(self, entry: RegistryEntry, key: Path | None = None) -> Release:
        private = load_private_key(key or self.keys.private_path)
        publisher = publisher_for(str(self.tmp_path / "published"))
        return make_release(entry.name, entry.version, entry.local_path(), entry.sha256, publisher, private)

    def twins(self) -> dict[str, dict[str, Any]]:
        return {
            t["deviceId"]: t for t in self.client.query(f"SELECT * FROM devices.modules WHERE moduleId = '{MODULE}'")
        }

    def running(self) -> dict[str, str | None]:
        models = {d: t["properties"]["reported"]["models"].get("iris", {}) for d, t in self.twins().items()}
        return {d: m.get("activeVersion") if m.get("state") == "active" else m.get("state") for d, m in models.items()}

    def ids(self) -> list[str]:
        return [c["id"] for c in self.client.list_configurations()]


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    keys = generate_key_pair(tmp_path / "keys", "release")
    hub = StandInHub(tmp_path / "hub.json", load_public_keys(keys.public_path.read_text()), devices=DEVICES)
    with HubServer(hub.respond) as server:
        credentials = HubCredentials.from_connection_string(hub.connection_string)
        with IoTHubClient(credentials, endpoint=server.url) as client:
            yield Lab(tmp_path, keys, client, server)


def test_ids_are_valid_configuration_ids_and_never_collide() -> None:
    assert naming.configuration_id("wine", "3", 5, "canary") == "wine-v3-r5-canary"
    upper, lower = naming.configuration_id("Wine", "3", 5, "fleet"), naming.configuration_id("wine", "3", 5, "fleet")
    assert upper != lower and upper == upper.lower() and naming.CONFIGURATION_ID.fullmatch(upper)
    longest = naming.configuration_id("M" * 64, "9" * 32, 2**31, "canary")
    assert len(longest) <= 128 and naming.CONFIGURATION_ID.fullmatch(longest)
    with pytest.raises(TemplateError):
        naming.configuration_id("wine", "3.1", 1, "canary")
    with pytest.raises(TemplateError):
        naming.configuration_id("wine", "3", 1, "beta")


def test_the_newest_rollout_outranks_everything_before_it() -> None:
    for rollout in range(1, 200):
        fleet, canary = naming.priority(rollout, "fleet"), naming.priority(rollout, "canary")
        assert naming.priority(rollout + 1, "fleet") > canary > fleet > naming.DEFAULT_PRIORITY_BASE
    last = (naming.MAX_PRIORITY - 1 - naming.DEFAULT_PRIORITY_BASE) // 2
    assert naming.priority(last, "canary") <= naming.MAX_PRIORITY
    with pytest.raises(TemplateError):
        naming.priority(last + 1, "canary")


def test_a_release_goes_canary_then_fleet_and_supersedes_the_last_rollout(lab: Lab) -> None:
    one, two = lab.release(lab.v1), lab.release(lab.v2)
    assert lab.rollout.deploy_ring(one, "canary", CANARY).created
    assert lab.running() == {"canary-1": "1", "plant-1": None, "plant-2": None}
    result = lab.rollout.deploy_ring(one, "fleet", FLEET)
    assert lab.running() == {"canary-1": "1", "plant-1": "1", "plant-2": "1"}
    assert result.deleted == [] and lab.ids() == ["iris-v1-r1-canary", "iris-v1-r1-fleet"]

    lab.rollout.deploy_ring(two, "canary", CANARY)
    # The new canary configuration outranks the old fleet one on the canary device only.
    assert lab.running() == {"canary-1": "2", "plant-1": "1", "plant-2": "1"}
    result = lab.rollout.deploy_ring(two, "fleet", FLEET)
    assert lab.running() == {"canary-1": "2", "plant-1": "2", "plant-2": "2"}
    assert result.deleted == ["iris-v1-r1-canary", "iris-v1-r1-fleet"]
    assert lab.ids() == ["iris-v2-r2-canary", "iris-v2-r2-fleet"]
    assert [d.priority for d in lab.rollout.deployed("iris")] == [105, 104]


def test_running_a_ring_again_resumes_it(lab: Lab) -> None:
    one = lab.release(lab.v1)
    lab.rollout.deploy_ring(one, "canary", CANARY)
    again = lab.rollout.deploy_ring(one, "canary", CANARY)
    assert not again.created and lab.ids() == ["iris-v1-r1-canary"]


def test_the_fleet_ring_needs_the_canary_ring_first(lab: Lab) -> None:
    with pytest.raises(RolloutError, match="deploy the canary ring of this release first"):
        lab.rollout.deploy_ring(lab.release(lab.v1), "fleet", FLEET)
    assert lab.ids() == []


def test_a_device_that_refuses_the_release_stops_the_rollout(lab: Lab) -> None:
    stranger = generate_key_pair(lab.tmp_path / "other-keys", "release")
    with pytest.raises(RolloutFailed, match=r"canary-1: .*signature"):
        lab.rollout.deploy_ring(lab.release(lab.v1, stranger.private_path), "canary", CANARY)
    assert lab.running()["plant-1"] is None  # the fleet was never asked


def test_a_ring_that_targets_no_device_times_out_and_says_why(lab: Lab) -> None:
    ticks = iter(range(100))
    lab.rollout.waiting = Waiting(
        timeout_seconds=3, poll_seconds=0, clock=lambda: float(next(ticks)), sleep=lambda s: None
    )
    with pytest.raises(RolloutTimeout, match="no device is targeted"):
        lab.rollout.deploy_ring(lab.release(lab.v1), "canary", "tags.ring='nowhere'")


def test_plan_compares_bytes_with_production(lab: Lab, tmp_path: Path) -> None:
    first = plan(lab.registry, "iris", version="1")
    assert first.deploy and first.production is None
    promote_to_production(lab.registry, "iris", "1")
    same_bytes = tmp_path / "candidate.onnx"
    same_bytes.write_bytes(lab.v1.local_path().read_bytes())
    unchanged = plan(lab.registry, "iris", candidate_file=same_bytes)
    assert not unchanged.deploy and unchanged.reason.startswith("nothing to deploy")
    changed = plan(lab.registry, "iris")  # the latest: version 2
    assert changed.deploy and changed.candidate.version == "2" and changed.production is not None
    unknown = tmp_path / "other.onnx"
    unknown.write_bytes(b"not registered")
    with pytest.raises(ModelNotFound, match="was the candidate registered"):
        plan(lab.registry, "iris", candidate_file=unknown)


def test_promotion_keeps_the_version_it_replaces_as_previous(lab: Lab) -> None:
    with pytest.raises(NoPreviousRelease, match="nothing of iris is in production"):
        rollback_target(lab.registry, "iris")
    promote_to_production(lab.registry, "iris", "1")
    with pytest.raises(NoPreviousRelease, match="version 1 is the only one"):
        rollback_target(lab.registry, "iris")
    promote_to_production(lab.registry, "iris", "1")  # again: nothing moves
    assert lab.registry.get("iris", version="1").aliases == (PRODUCTION,)
    promote_to_production(lab.registry, "iris", "2")
    assert lab.registry.get("iris", alias=PREVIOUS).version == "1"
    assert lab.registry.get("iris", alias=PRODUCTION).version == "2"
    with pytest.raises(ModelNotFound):
        promote_to_production(lab.registry, "iris", "9")
    assert lab.registry.get("iris", alias=PRODUCTION).version == "2"


def test_rollback_redeploys_the_previous_version_canary_then_fleet(lab: Lab) -> None:
    for entry in (lab.v1, lab.v2):
        release = lab.release(entry)
        lab.rollout.deploy_ring(release, "canary", CANARY)
        lab.rollout.deploy_ring(release, "fleet", FLEET)
        promote_to_production(lab.registry, "iris", entry.version)

    target, results = rollback(lab.registry, "iris", lab.rollout, lab.release, {"canary": None, "fleet": None})
    assert (target.previous.version, target.production.version) == ("1", "2")
    assert [r.deployed.id for r in results] == ["iris-v1-r3-canary", "iris-v1-r3-fleet"]
    assert [r.deployed.target_condition for r in results] == [CANARY, FLEET]  # taken from the hub
    assert lab.running() == {"canary-1": "1", "plant-1": "1", "plant-2": "1"}
    assert lab.ids() == ["iris-v1-r3-canary", "iris-v1-r3-fleet"]
    assert lab.registry.get("iris", alias=PRODUCTION).version == "1"
    assert lab.registry.get("iris", alias=PREVIOUS).version == "2"


def test_the_hub_never_holds_more_than_two_rollouts_of_a_model(lab: Lab) -> None:
    releases = [lab.release(lab.v1), lab.release(lab.v2)]
    most = 0
    for number in range(6):
        release = releases[number % 2]
        lab.rollout.deploy_ring(release, "canary", CANARY)
        most = max(most, len(lab.ids()))
        lab.rollout.deploy_ring(release, "fleet", FLEET)
        assert len(lab.ids()) == 2
    assert most == 3  # the old rollout's two and the new canary, until the new fleet ring is active


def test_cli_rollback_without_a_previous_release(
    lab: Lab, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("IOTHUB_CONNECTION_STRING", _connection(lab))
    promote_to_production(lab.registry, "iris", "1")
    args = ["rollout", "rollback", "iris", "--registry", str(lab.registry.root), "--key", str(lab.keys.private_path)]
    args += ["--to", str(lab.tmp_path / "published"), "--hub-endpoint", lab.server.url]
    assert main(args) == 7
    err = capsys.readouterr().err
    assert "error: no previous release of iris to roll back to: version 1 is the only one" in err
    assert lab.ids() == [] and lab.registry.get("iris", alias=PRODUCTION).version == "1"


def test_cli_status_lists_the_rollout(
    lab: Lab, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("IOTHUB_CONNECTION_STRING", _connection(lab))
    release_file = lab.tmp_path / "release.json"
    release_file.write_text(json.dumps({"iris": lab.release(lab.v1).as_desired()}))
    deploy = ["rollout", "deploy", "--release", str(release_file), "--ring", "canary", "--target-condition", CANARY]
    assert main([*deploy, "--poll", "0.05", "--timeout", "10", "--hub-endpoint", lab.server.url]) == 0
    capsys.readouterr()
    assert main(["rollout", "status", "iris", "--json", "--hub-endpoint", lab.server.url]) == 0
    status = json.loads(capsys.readouterr().out)
    assert [d["id"] for d in status["deployments"]] == ["iris-v1-r1-canary"]
    assert status["devices"]["active"] == {"1": 1}


def _connection(lab: Lab) -> str:
    c = lab.client.credentials
    return f"HostName={c.hostname};SharedAccessKeyName={c.key_name};SharedAccessKey={c.key}"


def test_cli_plan_and_promote(lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    registry = ["--registry", str(lab.registry.root)]
    candidate = tmp_path / "model.onnx"
    candidate.write_bytes(lab.v2.local_path().read_bytes())
    out = tmp_path / "plan.json"
    assert main(["rollout", "plan", "iris", "--candidate", str(candidate), *registry, "--out", str(out)]) == 0
    assert capsys.readouterr().out == "deploy iris version 2: nothing in production\n"
    assert json.loads(out.read_text())["deploy"] is True

    assert main(["rollout", "promote", "iris", "2", *registry]) == 0
    assert capsys.readouterr().out == "production: iris version 2\n"
    assert main(["rollout", "plan", "iris", "--candidate", str(candidate), *registry, "--out", str(out)]) == 0
    assert capsys.readouterr().out.startswith("nothing to deploy: iris version 2 has the bytes of production")
    written = json.loads(out.read_text())
    assert written.pop("reason").startswith("nothing to deploy: iris version 2")
    assert written == {
        "model": "iris",
        "deploy": False,
        "candidate": {"version": "2", "sha256": lab.v2.sha256},
        "production": {"version": "2", "sha256": lab.v2.sha256},
    }
    assert main(["rollout", "promote", "iris", "1", *registry]) == 0
    assert capsys.readouterr().out == "production: iris version 1; previous: version 2\n"
    assert main(["rollout", "promote", "iris", "7", *registry]) == 1
    assert "has no version '7'" in capsys.readouterr().err
