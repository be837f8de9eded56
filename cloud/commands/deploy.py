from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edge_module.release import Release

NAME = "deploy"
HELP = "render and validate IoT Edge manifests, layered deployments and twin patches, and apply them to IoT Hub"
TEMPLATE = Path(__file__).resolve().parents[2] / "deployment.template.json"
HUB_ENV = "IOTHUB_CONNECTION_STRING"
SCHEMA_DIR_HELP = (
    "folder of the IoT Edge JSON schemas (default: $IOTEDGE_SCHEMA_DIR, else the per-user cache, "
    "filled from json.schemastore.org on first use)"
)


def _releases(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument(
        "--release",
        action="append",
        type=Path,
        default=[],
        required=required,
        metavar="FILE",
        help="release JSON written by 'cloud release' (repeatable)",
    )
    parser.add_argument("--trusted-keys", type=Path, help="refuse releases not signed by one of these public keys")
    parser.add_argument("--module", default="edge-inference", help="the module's name (default: %(default)s)")
    parser.add_argument(
        "--spread-seconds",
        type=int,
        metavar="S",
        help="devices start their download after a random delay below S seconds (the release's spreadSeconds;"
        " 0 turns spreading off; not signed: see docs/fleet-scale.md#download-spreading)",
    )


def _hub(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--apply", action="store_true", help=f"{what} (connection string from ${HUB_ENV})")
    parser.add_argument("--hub-endpoint", help="IoT Hub base URL (default: https://<HostName>; for labs and tests)")


def configure(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    manifest = actions.add_parser("manifest", help="render deployment.template.json for a platform and releases")
    _releases(manifest)
    manifest.add_argument("--platform", required=True, choices=["amd64", "arm64v8"])
    manifest.add_argument("--template", type=Path, default=TEMPLATE, help="default: %(default)s")
    manifest.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="placeholder value")
    manifest.add_argument("--env-file", type=Path, help="placeholder values, NAME=VALUE lines (as in .env)")
    manifest.add_argument("--schema-dir", type=Path, help=SCHEMA_DIR_HELP)
    manifest.add_argument("--out", type=Path, required=True, help="manifest file to write")
    manifest.add_argument("--device", help="with --apply: the device to set the modules of")
    _hub(manifest, "apply to --device (POST applyConfigurationContent)")

    validate = actions.add_parser("validate", help="validate a manifest against the IoT Edge JSON schemas")
    validate.add_argument("manifest", type=Path)
    validate.add_argument("--schema-dir", type=Path, help=SCHEMA_DIR_HELP)
    validate.add_argument("--module", default="edge-inference")

    layered = actions.add_parser("layered", help="a layered deployment that sets only the module's models")
    _releases(layered)
    layered.add_argument("--id", required=True, help="deployment id, e.g. models-wine-3")
    layered.add_argument("--target-condition", required=True, help="e.g. \"tags.environment='prod'\"")
    layered.add_argument("--priority", type=int, required=True)
    layered.add_argument("--label", action="append", default=[], metavar="NAME=VALUE")
    layered.add_argument("--out", type=Path, required=True)
    _hub(layered, "create it in IoT Hub (PUT /configurations/{id})")

    twin = actions.add_parser("twin", help="patch one module twin's desired models (If-Match)")
    _releases(twin, required=False)
    twin.add_argument("--device", required=True)
    twin.add_argument("--remove", action="append", default=[], metavar="MODEL", help="set a model to null")
    twin.add_argument("--etag", default="*", help="the twin's etag; '*' overwrites unconditionally")
    _hub(twin, "send the patch (PATCH /twins/{dev}/modules/{mod})")


def run(args: argparse.Namespace) -> int:
    from cloud.errors import CloudError

    try:
        if args.action == "validate":
            return _validate(args)
        models = _load_models(args)
        if args.action == "manifest":
            return _manifest(args, models)
        if args.action == "layered":
            return _layered(args, models)
        return _twin(args, models)
    except CloudError as error:
        sys.stderr.write(f"error: {error.message}\n")
        return error.exit_code


def _load_models(args: argparse.Namespace) -> dict[str, Any]:
    from cloud.releases.errors import PublishError
    from cloud.releases.signing import models_block, releases_from_models_block
    from edge_module.release import ReleaseError, load_public_keys, verify_signature

    releases = []
    for path in args.release:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise PublishError(f"cannot read release {path}: {error}") from None
        releases += releases_from_models_block(data, str(path))
    if args.trusted_keys:
        keys = load_public_keys(args.trusted_keys.read_text(encoding="utf-8"))
        if not keys:
            raise PublishError(f"{args.trusted_keys} holds no ed25519 public key")
        for release in releases:
            try:
                verify_signature(release, keys)
            except ReleaseError as error:
                raise PublishError(str(error)) from None
    for release in releases:
        if not release.signature:
            sys.stderr.write(f"warning: release {release.name}:{release.version} is unsigned\n")
    if getattr(args, "spread_seconds", None) is not None:
        releases = [_with_spread(release, args.spread_seconds) for release in releases]
    return models_block(releases)


def _with_spread(release: Release, seconds: int) -> Release:
    from cloud.releases.errors import TemplateError
    from edge_module.release import ReleaseError, parse_release

    block = {**release.as_desired(), "spreadSeconds": seconds}
    try:
        return parse_release(release.name, block)  # the edge's own bounds
    except ReleaseError as error:
        raise TemplateError(f"--spread-seconds: {error}") from None


def _write(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Manifests may hold registry credentials: readable by the owner only.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(document, indent=2) + "\n")


def _hub_name() -> str:
    from cloud.errors import CloudError
    from cloud.releases.iothub import HubCredentials

    value = os.environ.get(HUB_ENV)
    if not value:
        return "<hub-name>"
    try:
        return HubCredentials.from_connection_string(value).hub_name
    except CloudError:
        return "<hub-name>"


def _client(args: argparse.Namespace) -> Any:
    from cloud.releases.errors import IoTHubError
    from cloud.releases.iothub import HubCredentials, IoTHubClient

    value = os.environ.get(HUB_ENV)
    if not value:
        raise IoTHubError(f"--apply needs the hub's connection string in ${HUB_ENV} (kept out of the command line)")
    return IoTHubClient(HubCredentials.from_connection_string(value), endpoint=args.hub_endpoint)


def _schemas(args: argparse.Namespace) -> Any:
    from cloud.releases.schema_sources import locate_schema_dir
    from cloud.releases.schemas import SchemaSet

    def report(line: str) -> None:
        sys.stderr.write(line + "\n")

    return SchemaSet(locate_schema_dir(args.schema_dir, report=report))


def _validate(args: argparse.Namespace) -> int:
    from cloud.releases.schemas import validate_manifest
    from cloud.releases.template import load_json

    manifest = load_json(args.manifest)
    validate_manifest(manifest, _schemas(args), str(args.manifest), args.module)
    sys.stdout.write(f"{args.manifest}: valid IoT Edge deployment manifest\n")
    return 0


def _manifest(args: argparse.Namespace, models: dict[str, Any]) -> int:
    from cloud.releases import azcli
    from cloud.releases.errors import TemplateError
    from cloud.releases.schemas import validate_manifest
    from cloud.releases.template import load_json, parse_assignments, read_env_file, render_manifest

    if args.apply and not args.device:
        raise TemplateError("--apply needs --device")
    schemas = _schemas(args)
    variables = dict(os.environ)
    if args.env_file:
        variables.update(read_env_file(args.env_file))
    variables.update(parse_assignments(args.set))
    template = load_json(args.template)
    manifest = render_manifest(template, args.platform, variables, models, args.module)
    validate_manifest(manifest, schemas, f"the manifest rendered from {args.template}", args.module)
    _write(args.out, manifest)
    sys.stdout.write(f"wrote {args.out} ({args.platform}; schema-valid)\n")
    device = args.device or "<device-id>"
    sys.stdout.write("equivalent: " + azcli.set_modules(_hub_name(), device, args.out) + "\n")
    if args.apply:
        with _client(args) as client:
            client.apply_configuration_content(args.device, manifest)
        sys.stdout.write(f"applied to device {args.device}\n")
    return 0


def _layered(args: argparse.Namespace, models: dict[str, Any]) -> int:
    from cloud.releases import azcli
    from cloud.releases.layered import layered_deployment
    from cloud.releases.template import parse_assignments

    configuration = layered_deployment(
        args.id, models, args.target_condition, args.priority, args.module, parse_assignments(args.label)
    )
    _write(args.out, configuration)
    sys.stdout.write(f"wrote {args.out}\n")
    sys.stdout.write("equivalent: " + azcli.layered_deployment(_hub_name(), configuration, args.out) + "\n")
    if args.apply:
        with _client(args) as client:
            created = client.put_configuration(configuration)
        sys.stdout.write(f"created deployment {created.get('id', args.id)} (etag {created.get('etag', '?')})\n")
    return 0


def _twin(args: argparse.Namespace, models: dict[str, Any]) -> int:
    from cloud.releases import azcli
    from cloud.releases.errors import TemplateError

    desired_models: dict[str, Any] = dict(models)
    for name in args.remove:
        if name in desired_models:
            raise TemplateError(f"model {name!r} is both released and removed")
        desired_models[name] = None
    if not desired_models:
        raise TemplateError("nothing to patch: give --release and/or --remove")
    desired = {"models": desired_models}
    sys.stdout.write(
        "equivalent: " + azcli.module_twin_update(_hub_name(), args.device, args.module, desired, args.etag) + "\n"
    )
    if args.apply:
        with _client(args) as client:
            twin = client.update_module_twin(args.device, args.module, {"properties": {"desired": desired}}, args.etag)
        version = twin.get("properties", {}).get("desired", {}).get("$version", "?")
        sys.stdout.write(f"patched {args.device}/{args.module} (desired $version {version})\n")
    else:
        sys.stdout.write(json.dumps(desired, indent=2) + "\n")
    return 0
