"""deployment.template.json, ``cloud deploy manifest|validate|layered|twin`` and offline schema validation."""

from __future__ import annotations

import hashlib
import json
import re
import stat
from pathlib import Path
from typing import Any

import pytest

from cloud.__main__ import main
from cloud.registry import LocalRegistry
from cloud.releases.errors import ManifestInvalid, SchemaUnavailable, TemplateError
from cloud.releases.keys import KeyPair, generate_key_pair
from cloud.releases.layered import layered_deployment
from cloud.releases.schema_sources import locate_schema_dir
from cloud.releases.schemas import SchemaSet, validate_manifest, validate_template
from cloud.releases.template import (
    CREATE_OPTIONS_CHUNK,
    chunk_create_options,
    load_json,
    read_env_file,
    render_manifest,
)
from tests.release.conftest import FIXTURES, TEMPLATE, VARIABLES

MODULE = "edge-inference"
RELEASE = {
    "version": "3",
    "uri": "https://contoso.blob.core.windows.net/models/iris/3/model.onnx?sv=2025-01-05&sp=r&sig=abc%2Bdef",
    "sha256": hashlib.sha256(b"model").hexdigest(),
    "size": 5,
    "signature": "c2lnbmF0dXJl",
}


def agent(manifest: dict[str, Any]) -> dict[str, Any]:
    desired: dict[str, Any] = manifest["modulesContent"]["$edgeAgent"]["properties.desired"]
    return desired


def create_options(settings: dict[str, Any]) -> Any:
    keys = sorted(k for k in settings if k.startswith("createOptions"))
    assert keys[0] == "createOptions" and all(re.fullmatch(r"createOptions0[1-7]", k) for k in keys[1:])
    assert all(len(settings[k]) <= CREATE_OPTIONS_CHUNK for k in keys)
    return json.loads("".join(settings[k] for k in keys))


def test_the_template_is_valid_against_the_template_schema(schemas: SchemaSet) -> None:
    template = load_json(TEMPLATE)
    validate_template(template, schemas, str(TEMPLATE))
    module = template["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"][MODULE]
    assert module["restartPolicy"] == "always"
    host = module["settings"]["createOptions"]["HostConfig"]
    assert host["PortBindings"] == {"8000/tcp": [{"HostPort": "8000"}], "8001/tcp": [{"HostPort": "8001"}]}
    assert module["env"]["EDGE_GRPC_PORT"] == {"value": "8001"}
    assert {"Type": "volume", "Source": "edge-inference-models", "Target": "/var/lib/edge-module/models"} in host[
        "Mounts"
    ]
    assert host["Memory"] > 0 and module["settings"]["createOptions"]["Healthcheck"]["Test"][0] == "CMD"
    assert module["env"]["EDGE_MODEL_DIR"] == {"value": "/var/lib/edge-module/models"}
    routes = template["modulesContent"]["$edgeHub"]["properties.desired"]["routes"]
    assert routes["leafDevicesToInference"]["route"] == (
        "FROM /messages/* WHERE NOT IS_DEFINED($connectionModuleId) "
        'INTO BrokeredEndpoint("/modules/edge-inference/inputs/input1")'
    )
    for output in ("predictions", "errors", "metrics", "capture"):
        assert any(
            r["route"] == f"FROM /messages/modules/{MODULE}/outputs/{output} INTO $upstream" for r in routes.values()
        )
    # Captured data waits longest and yields to everything else on a thin uplink (0 is edgeHub's highest priority).
    capture = next(r for r in routes.values() if r["route"].endswith("/outputs/capture INTO $upstream"))
    assert capture["priority"] == 9 == max(r["priority"] for r in routes.values())
    assert capture["timeToLiveSecs"] >= 7 * 86400
    assert template["modulesContent"]["$edgeHub"]["properties.desired"]["storeAndForwardConfiguration"][
        "timeToLiveSecs"
    ]
    assert "models" in template["modulesContent"][MODULE]["properties.desired"]
    # edgeHub's store-and-forward queue (captured data waits there for up to 14 days) and edgeAgent's state
    # live on the host, so recreating either container loses nothing (IoT Edge "Give modules access to a
    # device's local storage": StorageFolder plus a bind of a host folder).
    system = template["modulesContent"]["$edgeAgent"]["properties.desired"]["systemModules"]
    for name in ("edgeAgent", "edgeHub"):
        folder = system[name]["env"]["StorageFolder"]["value"]
        binds = system[name]["settings"]["createOptions"]["HostConfig"]["Binds"]
        assert any(bind.split(":")[1] == folder and bind.startswith("/") for bind in binds)


@pytest.mark.parametrize("platform", ["amd64", "arm64v8"])
def test_render_gives_a_schema_valid_manifest_per_platform(platform: str, schemas: SchemaSet) -> None:
    manifest = render_manifest(load_json(TEMPLATE), platform, VARIABLES, {"iris": RELEASE})
    validate_manifest(manifest, schemas, "rendered", MODULE)
    assert "$schema-template" not in manifest
    module = agent(manifest)["modules"][MODULE]
    assert module["settings"]["image"] == VARIABLES[f"EDGE_MODULE_IMAGE_{platform.upper()}"]
    # createOptions: stringified, chunked as IoT Edge reads it back, and equal to the template's object.
    template_options = load_json(TEMPLATE)["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"][MODULE][
        "settings"
    ]["createOptions"]
    assert create_options(module["settings"]) == template_options
    assert "createOptions01" in module["settings"]  # ours is longer than one twin value
    assert create_options(agent(manifest)["systemModules"]["edgeHub"]["settings"])["HostConfig"]["PortBindings"]
    # The releases replace the template's example block, verbatim (a SAS is not a placeholder).
    assert manifest["modulesContent"][MODULE]["properties.desired"]["models"] == {"iris": RELEASE}
    assert "${" not in json.dumps(manifest)


def test_undefined_placeholders_are_an_error_naming_each(schemas: SchemaSet) -> None:
    partial = {k: v for k, v in VARIABLES.items() if k != "CONTAINER_REGISTRY_PASSWORD"}
    with pytest.raises(TemplateError) as info:
        render_manifest(load_json(TEMPLATE), "arm64v8", {**partial, "EDGE_MODULE_IMAGE_ARM64V8": "x"}, {})
    assert "${CONTAINER_REGISTRY_PASSWORD} at /modulesContent/$edgeAgent/properties.desired/runtime" in str(info.value)
    no_image = {k: v for k, v in VARIABLES.items() if not k.startswith("EDGE_MODULE_IMAGE")}
    with pytest.raises(TemplateError, match=r"\$\{EDGE_MODULE_IMAGE\}"):
        render_manifest(load_json(TEMPLATE), "amd64", no_image, {})
    with pytest.raises(TemplateError, match="unknown platform"):
        render_manifest(load_json(TEMPLATE), "riscv", VARIABLES, {})
    with pytest.raises(TemplateError, match="not among the template"):
        render_manifest(load_json(TEMPLATE), "amd64", VARIABLES, {}, module="other")


def test_create_options_chunking_limits() -> None:
    assert chunk_create_options({}, "m") == {"createOptions": "{}"}
    big = {"Env": ["X=" + "y" * 1500]}
    chunks = chunk_create_options(big, "m")
    assert list(chunks) == ["createOptions", "createOptions01", "createOptions02"]
    assert json.loads("".join(chunks.values())) == big
    with pytest.raises(TemplateError, match="at most 4096"):
        chunk_create_options({"Env": ["X=" + "y" * 4200]}, "m")
    with pytest.raises(TemplateError, match="not valid JSON"):
        chunk_create_options("{not json", "m")


EXPECTED = json.loads((FIXTURES / "invalid-expected.json").read_text())


@pytest.mark.parametrize("fixture", sorted(EXPECTED))
def test_negative_fixtures_fail_with_a_clear_error(fixture: str, schemas: SchemaSet) -> None:
    manifest = json.loads((FIXTURES / "invalid" / fixture).read_text())
    with pytest.raises(ManifestInvalid) as info:
        validate_manifest(manifest, schemas, fixture, MODULE)
    assert EXPECTED[fixture] in str(info.value), str(info.value)
    assert str(info.value).startswith(f"{fixture} is not a valid IoT Edge deployment manifest")


def test_twin_limits_are_enforced(schemas: SchemaSet) -> None:
    manifest = render_manifest(load_json(TEMPLATE), "amd64", VARIABLES, {"iris": RELEASE})
    manifest["modulesContent"][MODULE]["properties.desired"]["notes"] = "x" * 33000
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(11):
        node["d"] = {}
        node = node["d"]
    manifest["modulesContent"][MODULE]["properties.desired"]["deep"] = deep
    with pytest.raises(ManifestInvalid) as info:
        validate_manifest(manifest, schemas, "big", MODULE)
    assert "above IoT Hub's 32768" in str(info.value)
    assert "nested deeper than IoT Hub's 10 levels" in str(info.value)


def test_without_schemas_validation_fails_loudly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IOTEDGE_SCHEMA_DIR", raising=False)
    with pytest.raises(SchemaUnavailable, match="validation cannot be skipped"):
        locate_schema_dir(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SchemaUnavailable, match="no azure-iot-"):
        validate_manifest({"modulesContent": {}}, SchemaSet(tmp_path / "empty"), "m")


def test_schema_refs_resolve_offline_only(tmp_path: Path, schemas: SchemaSet) -> None:
    # A copy of just the template schema: its $refs point at the agent/hub schemas, which are absent, and
    # validation must fail rather than fetch them from json.schemastore.org.
    source = schemas.directory / "schemastore" / "azure-iot-edge-deployment-template-4.0.json"
    (tmp_path / "azure-iot-edge-deployment-template-4.0.json").write_text(source.read_text())
    with pytest.raises(SchemaUnavailable, match="not among the local schemas"):
        validate_template(load_json(TEMPLATE), SchemaSet(tmp_path), "template")


def test_env_files(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("# registry\nexport CONTAINER_REGISTRY_ADDRESS=contoso.azurecr.io\nPASSWORD='a=b'\n\n")
    assert read_env_file(env) == {"CONTAINER_REGISTRY_ADDRESS": "contoso.azurecr.io", "PASSWORD": "a=b"}
    env.write_text("not an assignment\n")
    with pytest.raises(TemplateError, match=":1: expected NAME=VALUE"):
        read_env_file(env)


def test_layered_deployment_sets_only_the_models_of_our_module() -> None:
    body = layered_deployment("models-iris-3", {"iris": RELEASE}, "tags.site='plant-7'", 20, MODULE, {"app": "x"})
    assert body["content"] == {"modulesContent": {MODULE: {"properties.desired.models": {"iris": RELEASE}}}}
    assert body["targetCondition"] == "tags.site='plant-7'" and body["priority"] == 20
    queries = body["metrics"]["queries"]
    assert queries["irisActive"].endswith("properties.reported.models.iris.activeVersion = '3'")
    assert "state = 'failed'" in queries["irisFailed"]
    with pytest.raises(TemplateError, match="invalid deployment id"):
        layered_deployment("Models 3", {"iris": RELEASE}, "tags.x='y'", 1, MODULE)
    with pytest.raises(TemplateError, match="target condition"):
        layered_deployment("m", {"iris": RELEASE}, " ", 1, MODULE)
    many = {f"model{i}": RELEASE for i in range(150)}
    with pytest.raises(ManifestInvalid, match="does not fit in a module twin"):
        layered_deployment("m", many, "tags.a='b'", 1, MODULE)


def write_release(tmp_path: Path, block: dict[str, Any]) -> Path:
    path = tmp_path / "release.json"
    path.write_text(json.dumps(block))
    return path


def test_deploy_cli_renders_validates_and_prints_the_az_command(
    tmp_path: Path, schemas: SchemaSet, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("IOTHUB_CONNECTION_STRING", raising=False)
    release = write_release(tmp_path, {"iris": RELEASE})
    out = tmp_path / "out" / "deployment.arm64v8.json"
    sets = [f"--set={k}={v}" for k, v in VARIABLES.items()]
    args = ["deploy", "manifest", "--release", str(release), "--platform", "arm64v8", "--out", str(out)]
    assert main([*args, "--schema-dir", str(schemas.directory), *sets]) == 0
    stdout = capsys.readouterr().out
    assert f"az iot edge set-modules --hub-name '<hub-name>' --device-id '<device-id>' --content {out}" in stdout
    assert stat.S_IMODE(out.stat().st_mode) == 0o600  # it holds registry credentials
    manifest = json.loads(out.read_text())
    assert agent(manifest)["modules"][MODULE]["settings"]["image"].endswith("-arm64v8")
    assert main(["deploy", "validate", str(out), "--schema-dir", str(schemas.directory)]) == 0
    assert "valid IoT Edge deployment manifest" in capsys.readouterr().out

    bad = FIXTURES / "invalid" / "restart-policy.json"
    assert main(["deploy", "validate", str(bad), "--schema-dir", str(schemas.directory)]) == 5
    assert "'sometimes' is not one of" in capsys.readouterr().err
    assert main(["deploy", "validate", str(bad), "--schema-dir", str(tmp_path / "none")]) == 4
    assert "no IoT Edge JSON schemas" in capsys.readouterr().err
    assert main([*args, "--schema-dir", str(schemas.directory)]) == 1  # no --set: placeholders undefined
    assert "undefined placeholders" in capsys.readouterr().err


def test_deploy_refuses_releases_not_signed_by_a_trusted_key(
    tmp_path: Path, schemas: SchemaSet, capsys: pytest.CaptureFixture[str]
) -> None:
    trusted = generate_key_pair(tmp_path / "trusted", "t")
    release = write_release(tmp_path, {"iris": RELEASE})  # signature is not from the trusted key
    args = ["deploy", "layered", "--release", str(release), "--id", "m", "--target-condition", "tags.a='b'"]
    args += ["--priority", "1", "--out", str(tmp_path / "layered.json"), "--trusted-keys", str(trusted.public_path)]
    assert main(args) == 1
    assert "does not match any trusted key" in capsys.readouterr().err
    assert not (tmp_path / "layered.json").exists()


def test_train_release_deploy_renders_a_schema_valid_manifest(
    tmp_path: Path, registry: LocalRegistry, keys: KeyPair, schemas: SchemaSet, capsys: pytest.CaptureFixture[str]
) -> None:
    train = ["train", "--data", "sklearn:iris", "--name", "iris", "--registry", str(registry.root)]
    train += ["--algorithm", "logistic_regression", "--trials", "1", "--cv", "2", "--no-progress"]
    train += ["--out", str(tmp_path / "run")]
    assert main(train) == 0, capsys.readouterr().err
    release_file = tmp_path / "release.json"
    release = ["release", "iris", "--registry", str(registry.root), "--key", str(keys.private_path)]
    assert main([*release, "--to", str(tmp_path / "published"), "--out", str(release_file)]) == 0
    out = tmp_path / "deployment.amd64.json"
    deploy = ["deploy", "manifest", "--release", str(release_file), "--platform", "amd64", "--out", str(out)]
    deploy += ["--schema-dir", str(schemas.directory), "--trusted-keys", str(keys.public_path)]
    assert main([*deploy, *(f"--set={k}={v}" for k, v in VARIABLES.items())]) == 0, capsys.readouterr().err
    manifest = json.loads(out.read_text())
    models = manifest["modulesContent"][MODULE]["properties.desired"]["models"]
    entry = registry.get("iris")
    assert models["iris"]["sha256"] == entry.sha256 and models["iris"]["version"] == entry.version
    validate_manifest(manifest, schemas, str(out), MODULE)


def test_deploy_layered_sets_the_release_spread(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    release = write_release(tmp_path, {"iris": RELEASE})
    args = ["deploy", "layered", "--release", str(release), "--id", "m", "--target-condition", "tags.a='b'"]
    args += ["--priority", "1", "--out", str(tmp_path / "layered.json")]
    assert main([*args, "--spread-seconds", "600"]) == 0
    models = json.loads((tmp_path / "layered.json").read_text())["content"]["modulesContent"][MODULE]
    assert models["properties.desired.models"]["iris"] == {**RELEASE, "spreadSeconds": 600}
    assert main([*args, "--spread-seconds", "7200"]) == 1
    assert "'spreadSeconds' must be an integer from 0 to 3600" in capsys.readouterr().err
