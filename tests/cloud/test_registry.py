from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cloud.__main__ import main
from cloud.errors import ModelNotFound, RegistryError
from cloud.registry import LocalRegistry
from tests.support.models import iris_classifier


@pytest.fixture
def registry(tmp_path: Path) -> LocalRegistry:
    return LocalRegistry(tmp_path / "registry")


def test_register_assigns_immutable_increasing_versions(registry: LocalRegistry) -> None:
    model = iris_classifier().onnx
    first = registry.register("iris", model, metrics={"accuracy": 0.9}, tags={"team": "a"}, metadata={"task": "c"})
    second = registry.register("iris", model + b"", metrics={"accuracy": 0.95}, tags={}, metadata={})

    assert (first.version, second.version) == ("1", "2")
    assert first.sha256 == hashlib.sha256(model).hexdigest()
    assert first.size == len(model)
    assert first.path.read_bytes() == model
    assert first.path.name == "model.onnx"
    assert registry.get("iris").version == "2"
    assert registry.get("iris", "1").metrics == {"accuracy": 0.9}
    assert registry.get("iris", "1").tags == {"team": "a"}
    assert registry.get("iris", "1").created_at.endswith("Z")


def test_promote_moves_the_alias(registry: LocalRegistry) -> None:
    for _ in range(2):
        registry.register("iris", b"onnx", metrics={}, tags={}, metadata={})
    registry.promote("iris", "1")
    assert registry.get("iris", alias="production").version == "1"
    assert registry.get("iris", "1").aliases == ("production",)
    registry.promote("iris", "2")
    assert registry.get("iris", alias="production").version == "2"
    assert registry.get("iris", "1").aliases == ()
    assert [e.aliases for e in registry.list("iris")] == [(), ("production",)]


def test_unknowns_and_bad_names_are_typed_errors(registry: LocalRegistry) -> None:
    with pytest.raises(ModelNotFound):
        registry.get("nothing")
    registry.register("m", b"x", metrics={}, tags={}, metadata={})
    with pytest.raises(ModelNotFound):
        registry.get("m", "7")
    with pytest.raises(ModelNotFound):
        registry.get("m", alias="production")
    with pytest.raises(ModelNotFound):
        registry.promote("m", "9")
    for bad in ("a.b", "a b", "", "x" * 65, "../up"):
        with pytest.raises(RegistryError):
            registry.register(bad, b"x", metrics={}, tags={}, metadata={})
    with pytest.raises(RegistryError):
        registry.register("m", b"", metrics={}, tags={}, metadata={})


def test_concurrent_registrations_never_share_a_version(registry: LocalRegistry) -> None:
    with ThreadPoolExecutor(max_workers=4) as pool:
        entries = list(
            pool.map(lambda i: registry.register("m", bytes([i]) * 10, metrics={}, tags={}, metadata={}), range(12))
        )
    assert sorted(int(e.version) for e in entries) == list(range(1, 13))
    for entry in entries:
        assert registry.get("m", entry.version).sha256 == entry.sha256


def test_incomplete_version_folder_is_ignored(registry: LocalRegistry) -> None:
    registry.register("m", b"x", metrics={}, tags={}, metadata={})
    (registry.root / "m" / "2").mkdir()  # a crashed registration: no entry.json
    assert [e.version for e in registry.list("m")] == ["1"]
    assert registry.register("m", b"y", metrics={}, tags={}, metadata={}).version == "3"


def test_default_root_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOUD_REGISTRY_DIR", str(tmp_path / "r"))
    assert LocalRegistry().root == tmp_path / "r"
    monkeypatch.delenv("CLOUD_REGISTRY_DIR")
    assert LocalRegistry().root == Path("registry")


def test_cli_list_show_promote(registry: LocalRegistry, capsys: pytest.CaptureFixture[str]) -> None:
    registry.register("iris", b"a", metrics={"f1": 1.0}, tags={}, metadata={})
    registry.register("iris", b"b", metrics={}, tags={}, metadata={})
    base = ["registry", "--registry", str(registry.root)]

    assert main([*base, "promote", "iris", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["aliases"] == ["production"]
    assert main([*base, "show", "iris", "--alias", "production"]) == 0
    assert json.loads(capsys.readouterr().out)["metrics"] == {"f1": 1.0}
    assert main([*base, "list"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["NAME", "VERSION", "ALIASES"]
    assert [line.split()[:3] for line in table[1:]] == [["iris", "1", "production"], ["iris", "2", "-"]]
    assert main([*base, "list", "--json"]) == 0
    assert [e["version"] for e in json.loads(capsys.readouterr().out)] == ["1", "2"]
    assert main([*base, "show", "iris", "--version", "5"]) == 1
    assert "no version '5'" in capsys.readouterr().err
