"""The registry of record, one suite over both backends: a local folder, and Azure ML through azure-ai-ml against
the stand-in at the HTTP transport (tests/cloud/azureml_service.py)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from cloud.__main__ import main
from cloud.errors import (
    AzureConfigError,
    ModelIntegrityError,
    ModelNotFound,
    RegistryError,
    RegistryUnavailable,
    VersionTaken,
)
from cloud.registry import LocalRegistry, Registry, RegistryEntry
from cloud.registry_location import open_registry, parse_location
from tests.cloud.azure_fake import (
    AZUREML_URI,
    CLIENT_ID,
    RESOURCE_GROUP,
    SUBSCRIPTION,
    TENANT,
    WORKSPACE,
    add_login_routes,
    fake_azure,
)
from tests.cloud.azureml_service import AzureMLService
from tests.support.models import iris_classifier

BIG_METADATA = {"features": [{"name": f"feature_{i:03d}", "type": "numeric"} for i in range(60)], "task": "c"}


@dataclass
class Backend:
    kind: str
    location: str  # what --registry takes
    registry: Registry
    corrupt: Callable[[RegistryEntry, bytes], None]  # change a version's stored file behind the registry's back
    service: AzureMLService | None = None


@contextmanager
def open_backend(kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Backend]:
    monkeypatch.delenv("CLOUD_REGISTRY", raising=False)
    monkeypatch.delenv("CLOUD_REGISTRY_DIR", raising=False)
    if kind == "local":
        location = str(tmp_path / "registry")

        def corrupt_local(entry: RegistryEntry, data: bytes) -> None:
            entry.local_path().write_bytes(data)

        yield Backend("local", location, open_registry(location), corrupt_local)
        return
    with fake_azure(monkeypatch) as fake:
        service = AzureMLService(tmp_path / "azureml")
        service.install(fake)
        add_login_routes(fake)
        # DefaultAzureCredential -> EnvironmentCredential, answered by the stand-in's Entra ID routes.
        monkeypatch.setenv("AZURE_TENANT_ID", TENANT)
        monkeypatch.setenv("AZURE_CLIENT_ID", CLIENT_ID)
        monkeypatch.setenv("AZURE_CLIENT_SECRET", "not-a-secret")

        def corrupt_blob(entry: RegistryEntry, data: bytes) -> None:
            [version] = [v for v in service.versions(entry.name) if v["name"] == entry.version]
            service.corrupt_blob(version["properties"]["modelUri"].rsplit("/paths/", 1)[1], data)

        yield Backend("azureml", AZUREML_URI, open_registry(AZUREML_URI), corrupt_blob, service)


@pytest.fixture(params=["local", "azureml"])
def backend(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Backend]:
    with open_backend(request.param, tmp_path, monkeypatch) as opened:
        yield opened


AzureBackend = tuple[Backend, AzureMLService]


@pytest.fixture
def azure_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[AzureBackend]:
    """Azure ML only: the cases where the service fails or holds state a folder cannot."""
    with open_backend("azureml", tmp_path, monkeypatch) as opened:
        assert opened.service is not None
        yield opened, opened.service


def register(registry: Registry, name: str, data: bytes, **record: object) -> RegistryEntry:
    registration = registry.register(name, data, **record)  # type: ignore[arg-type]
    assert registration.created
    return registration.entry


def test_register_then_read_back_everything(backend: Backend, tmp_path: Path) -> None:
    model = iris_classifier().onnx
    entry = register(
        backend.registry,
        "iris",
        model,
        metrics={"accuracy": 0.9, "f1_macro": 0.88},
        tags={"team": "edge", "pipeline_run": "r-1"},
        metadata={**BIG_METADATA, "parity": {"passed": True}, "lineage": {"dataset": "sklearn:iris"}},
    )

    assert (entry.name, entry.version, entry.size) == ("iris", "1", len(model))
    assert entry.sha256 == hashlib.sha256(model).hexdigest()
    assert entry.created_at.endswith("Z")
    again = backend.registry.get("iris", "1")
    assert again == entry
    assert again.metrics == {"accuracy": 0.9, "f1_macro": 0.88}
    assert again.tags == {"team": "edge", "pipeline_run": "r-1"}
    assert again.metadata["features"] == BIG_METADATA["features"]  # longer than one Azure ML property value
    assert again.metadata["parity"] == {"passed": True}
    assert again.metadata["lineage"] == {"dataset": "sklearn:iris"}
    assert backend.registry.fetch(again, tmp_path / "fetched").read_bytes() == model
    assert [e.version for e in backend.registry.list()] == ["1"]


def test_identical_bytes_register_nothing(backend: Backend) -> None:
    first = register(backend.registry, "iris", b"model-a", metrics={"accuracy": 0.9})
    again = backend.registry.register("iris", b"model-a", metrics={"accuracy": 0.5})

    assert not again.created
    assert again.entry == first
    assert again.message() == "unchanged: iris version 1"
    assert [e.version for e in backend.registry.list("iris")] == ["1"]
    assert backend.registry.get("iris").metrics == {"accuracy": 0.9}


def test_versions_only_grow_and_are_immutable(backend: Backend) -> None:
    versions = [register(backend.registry, "m", data).version for data in (b"a", b"b", b"a", b"c", b"d")]

    # b"a" after b"b" differs from the latest: a new version (5 of them: more than one list page on Azure ML).
    assert versions == ["1", "2", "3", "4", "5"]
    assert [e.version for e in backend.registry.list("m")] == versions
    assert backend.registry.get("m").version == "5"
    assert backend.registry.next_version("m") == "6"
    with pytest.raises(VersionTaken):
        backend.registry.register("m", b"e", version="2")
    assert backend.registry.get("m", "2").sha256 == hashlib.sha256(b"b").hexdigest()
    assert backend.registry.register("m", b"e", version="6").entry.version == "6"


def test_promote_moves_the_alias_and_only_one_version_holds_it(backend: Backend) -> None:
    for data in (b"a", b"b", b"c"):
        register(backend.registry, "iris", data)

    assert backend.registry.promote("iris", "1").aliases == ("production",)
    assert backend.registry.promote("iris", "3", alias="staging").aliases == ("staging",)
    assert backend.registry.promote("iris", "2").aliases == ("production",)

    assert [e.aliases for e in backend.registry.list("iris")] == [(), ("production",), ("staging",)]
    assert backend.registry.get("iris", alias="production").version == "2"
    assert backend.registry.get("iris", alias="staging").version == "3"


def test_concurrent_promotions_leave_exactly_one_holder(backend: Backend) -> None:
    for data in (b"a", b"b", b"c", b"d"):
        register(backend.registry, "iris", data)
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda v: backend.registry.promote("iris", v), ["1", "2", "3", "4"]))

    holders = [e.version for e in backend.registry.list("iris") if "production" in e.aliases]
    assert len(holders) == 1
    assert backend.registry.get("iris", alias="production").version == holders[0]


def test_promote_to_a_version_that_does_not_exist(backend: Backend, capsys: pytest.CaptureFixture[str]) -> None:
    register(backend.registry, "iris", b"a")
    backend.registry.promote("iris", "1")

    with pytest.raises(ModelNotFound, match="no version '7'"):
        backend.registry.promote("iris", "7")
    assert main(["registry", "--registry", backend.location, "promote", "iris", "9"]) == 1
    assert "error: model 'iris' has no version '9'" in capsys.readouterr().err
    assert main(["registry", "--registry", backend.location, "promote", "nothing", "1"]) == 1
    assert "error: model 'nothing' is not in the registry" in capsys.readouterr().err
    assert backend.registry.get("iris", alias="production").version == "1"


def test_unknowns_and_bad_input_are_typed_errors(backend: Backend) -> None:
    with pytest.raises(ModelNotFound):
        backend.registry.get("nothing")
    assert backend.registry.latest("nothing") is None
    register(backend.registry, "m", b"x")
    with pytest.raises(ModelNotFound):
        backend.registry.get("m", "7")
    with pytest.raises(ModelNotFound):
        backend.registry.get("m", alias="production")
    with pytest.raises(RegistryError, match="invalid alias"):
        backend.registry.promote("m", "1", alias="no spaces")
    for bad in ("a.b", "a b", "", "x" * 65, "../up"):
        with pytest.raises(RegistryError):
            backend.registry.register(bad, b"x")
    with pytest.raises(RegistryError, match="empty"):
        backend.registry.register("m", b"")
    assert [e.version for e in backend.registry.list("m")] == ["1"]


def test_cli_list_show_promote(backend: Backend, capsys: pytest.CaptureFixture[str]) -> None:
    model = iris_classifier().onnx
    register(backend.registry, "iris", model, metrics={"f1": 1.0})
    register(backend.registry, "iris", b"b")
    base = ["registry", "--registry", backend.location]

    assert main([*base, "promote", "iris", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["aliases"] == ["production"]
    assert main([*base, "show", "iris", "--alias", "production"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["metrics"] == {"f1": 1.0}
    assert shown["sha256"] == hashlib.sha256(model).hexdigest()
    assert shown["profile"] is None or isinstance(shown["profile"], dict)  # from the ONNX file's own metadata
    assert main([*base, "list"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["NAME", "VERSION", "ALIASES"]
    assert [line.split()[:3] for line in table[1:]] == [["iris", "1", "production"], ["iris", "2", "-"]]
    assert main([*base, "list", "--json"]) == 0
    assert [e["version"] for e in json.loads(capsys.readouterr().out)] == ["1", "2"]
    assert main([*base, "show", "iris", "--version", "5"]) == 1
    assert "no version '5'" in capsys.readouterr().err


def test_release_rechecks_the_sha256_recorded_at_registration(
    backend: Backend, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = iris_classifier().onnx
    entry = register(backend.registry, "iris", model)
    assert main(["keys", "new", "--dir", str(tmp_path / "keys")]) == 0
    release = ["release", "iris", "--registry", backend.location, "--key", str(tmp_path / "keys" / "release.key")]

    assert main([*release, "--to", str(tmp_path / "published"), "--out", str(tmp_path / "ok.json")]) == 0
    assert json.loads((tmp_path / "ok.json").read_text())["iris"]["sha256"] == entry.sha256
    assert (tmp_path / "published" / "iris" / "1" / "model.onnx").read_bytes() == model

    backend.corrupt(entry, model + b"tampered")
    capsys.readouterr()
    assert main([*release, "--to", str(tmp_path / "again"), "--out", str(tmp_path / "bad.json")]) == 1
    error = capsys.readouterr().err
    assert f"the registry recorded {entry.sha256} at registration; refusing" in error
    assert not (tmp_path / "bad.json").exists()
    assert not (tmp_path / "again" / "iris").exists()
    with pytest.raises(ModelIntegrityError):
        backend.registry.fetch(entry, tmp_path / "fetch")


@pytest.mark.parametrize(
    "location",
    [
        "azureml://subscriptions/not-a-guid/resourceGroups/rg/workspaces/ws",
        "azureml://subscriptions/00000000-0000-0000-0000-000000000001/workspaces/ws",
        "azureml://subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg/workspaces/w",
        "azureml:ws-edge",
        "azureml:/",
        "https://ml.azure.com/registries/x",
        "s3://bucket/models",
        "  ",
    ],
)
def test_a_malformed_registry_location_is_refused_before_any_work(
    location: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RegistryError):
        parse_location(location)
    assert main(["registry", "--registry", location, "list"]) == 1
    assert "registry location" in capsys.readouterr().err
    args = ["train", "--data", "sklearn:iris", "--registry", location, "--out", str(tmp_path / "run"), "--no-progress"]
    assert main(args) == 1
    assert "registry location" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # refused before training
    monkeypatch.setenv("CLOUD_REGISTRY", location)
    assert main(["registry", "list"]) == 1
    assert list(tmp_path.iterdir()) == []


def test_location_sources_and_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CLOUD_REGISTRY", "CLOUD_REGISTRY_DIR", "AZUREML_SUBSCRIPTION_ID"):
        monkeypatch.delenv(name, raising=False)
    assert isinstance(open_registry(), LocalRegistry) and open_registry().location == "registry"
    monkeypatch.setenv("CLOUD_REGISTRY_DIR", str(tmp_path / "old"))
    assert open_registry().location == str(tmp_path / "old")  # deprecated, still honoured
    monkeypatch.setenv("CLOUD_REGISTRY", str(tmp_path / "new"))
    assert open_registry().location == str(tmp_path / "new")
    assert open_registry(tmp_path / "given").location == str(tmp_path / "given")
    parsed = parse_location(AZUREML_URI)
    assert (parsed.kind, parsed.subscription_id, parsed.resource_group, parsed.workspace) == (
        "azureml",
        SUBSCRIPTION,
        RESOURCE_GROUP,
        WORKSPACE,
    )
    assert parse_location("azureml:").subscription_id is None
    with pytest.raises(AzureConfigError, match="no Azure ML workspace configured"):
        open_registry("azureml:")


# -- Azure ML only: the service failing half way ---------------------------------------------------------------


@pytest.mark.parametrize("unreachable", [False, True])
def test_azureml_failing_mid_registration_leaves_no_version_and_a_retry_succeeds(
    azure_backend: AzureBackend, unreachable: bool
) -> None:
    backend, service = azure_backend
    register(backend.registry, "iris", b"a")
    # The file upload succeeds; creating the version fails through the SDK's own retries.
    service.fail("PUT", r"/models/iris/versions/\d+$", status=503, times=100, unreachable=unreachable)

    with pytest.raises(RegistryUnavailable, match="nothing was changed, retry"):
        backend.registry.register("iris", b"b")

    assert [v["name"] for v in service.versions("iris")] == ["1"]
    assert [e.version for e in backend.registry.list("iris")] == ["1"]
    service.clear_faults()
    retried = backend.registry.register("iris", b"b")
    assert (retried.created, retried.entry.version) == (True, "2")
    assert backend.registry.get("iris").sha256 == hashlib.sha256(b"b").hexdigest()


def test_azureml_a_transient_5xx_is_retried_by_the_sdk(azure_backend: AzureBackend) -> None:
    backend, service = azure_backend
    service.fail("PUT", r"/models/iris/versions/\d+$", status=500, times=1)
    assert backend.registry.register("iris", b"a").entry.version == "1"
    assert [v["name"] for v in service.versions("iris")] == ["1"]


def test_azureml_a_version_created_whose_answer_was_lost_is_unchanged_on_retry(
    azure_backend: AzureBackend,
) -> None:
    backend, service = azure_backend
    register(backend.registry, "iris", b"a")
    # The service creates the version but every answer to the PUT is lost (e.g. a gateway timeout).
    service.fail("PUT", r"/models/iris/versions/\d+$", status=504, times=100, after=True)
    with pytest.raises(RegistryUnavailable):
        backend.registry.register("iris", b"b")
    service.clear_faults()

    assert [v["name"] for v in service.versions("iris")] == ["1", "2"]  # complete: one PUT carries the record
    again = backend.registry.register("iris", b"b")
    assert (again.created, again.entry.version) == (False, "2")
    assert again.entry.sha256 == hashlib.sha256(b"b").hexdigest()


def test_azureml_a_deleted_version_number_is_never_reused(azure_backend: AzureBackend) -> None:
    backend, service = azure_backend
    register(backend.registry, "iris", b"a")
    register(backend.registry, "iris", b"b")
    service.delete_version("iris", "2")  # the service remembers it: "cannot be recreated"

    assert [e.version for e in backend.registry.list("iris")] == ["1"]
    assert backend.registry.next_version("iris") == "2"  # the service alone knows 2 is gone for good
    with pytest.raises(VersionTaken, match="cannot be recreated"):
        backend.registry.register("iris", b"c", version="2")
    assert backend.registry.register("iris", b"c").entry.version == "3"


def test_azureml_registering_without_a_number_skips_a_deleted_one(azure_backend: AzureBackend) -> None:
    backend, service = azure_backend
    register(backend.registry, "iris", b"a")
    register(backend.registry, "iris", b"b")
    service.delete_version("iris", "2")
    assert backend.registry.register("iris", b"c").entry.version == "3"
    assert [v["name"] for v in service.versions("iris")] == ["1", "3"]


def test_azureml_mapping_of_tags_and_properties(azure_backend: AzureBackend) -> None:
    backend, service = azure_backend
    model = iris_classifier().onnx
    register(backend.registry, "iris", model, metrics={"accuracy": 0.9}, tags={"team": "edge"}, metadata=BIG_METADATA)
    backend.registry.promote("iris", "1")

    [stored] = service.versions("iris")
    properties = stored["properties"]
    digest = hashlib.sha256(model).hexdigest()
    assert properties["modelType"] == "custom_model"
    uri = f"{AZUREML_URI}/datastores/workspaceblobstore/paths/LocalUpload/"
    assert properties["modelUri"].lower().startswith(uri.lower())  # azure-ai-ml writes "resourcegroups"
    assert properties["tags"] == {"team": "edge", "sha256": digest, "format": "onnx", "edge.alias.production": "1"}
    record = properties["properties"]
    assert (record["edge.sha256"], record["edge.size"]) == (digest, str(len(model)))
    assert json.loads(record["edge.metrics"]) == {"accuracy": 0.9}
    parts = int(record["edge.metadata.parts"])
    assert parts >= 2 and all(len(record[f"edge.metadata.{i}"]) <= 1000 for i in range(parts))
    assert json.loads("".join(record[f"edge.metadata.{i}"] for i in range(parts))) == BIG_METADATA


def test_azureml_limits_are_checked_before_anything_is_sent(azure_backend: AzureBackend) -> None:
    backend, service = azure_backend
    with pytest.raises(RegistryError, match="51 tags exceed Azure ML's limit of 50"):
        backend.registry.register("iris", b"a", tags={f"t{i}": "v" for i in range(49)})
    with pytest.raises(RegistryError, match="exceeds Azure ML's 1000 characters"):
        backend.registry.register("iris", b"a", tags={"note": "x" * 1001})
    with pytest.raises(RegistryError, match="reserved"):
        backend.registry.register("iris", b"a", tags={"edge.alias.production": "1"})
    assert service.blob_keys() == []
    assert service.versions("iris") == []


# -- local folder only ---------------------------------------------------------------------------------------------


def test_local_concurrent_registrations_never_share_a_version(tmp_path: Path) -> None:
    registry = LocalRegistry(tmp_path / "registry")
    with ThreadPoolExecutor(max_workers=4) as pool:
        entries = list(pool.map(lambda i: registry.register("m", bytes([i]) * 10).entry, range(12)))
    assert sorted(int(e.version) for e in entries) == list(range(1, 13))
    for entry in entries:
        assert registry.get("m", entry.version).sha256 == entry.sha256


def test_local_incomplete_version_folder_is_ignored_and_its_number_skipped(tmp_path: Path) -> None:
    registry = LocalRegistry(tmp_path / "registry")
    registry.register("m", b"x")
    (registry.root / "m" / "2").mkdir()  # a crashed registration: no entry.json
    assert [e.version for e in registry.list("m")] == ["1"]
    assert registry.register("m", b"y").entry.version == "3"


def test_local_default_root_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOUD_REGISTRY_DIR", str(tmp_path / "r"))
    assert LocalRegistry().root == tmp_path / "r"
    monkeypatch.delenv("CLOUD_REGISTRY_DIR")
    assert LocalRegistry().root == Path("registry")
