from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

NAME = "rollout"
HELP = "roll releases out ring by ring (canary, then fleet), supersede older rollouts, and roll back"
HUB_ENV = "IOTHUB_CONNECTION_STRING"
KEY_ENV = "CLOUD_SIGNING_KEY"


def _registry_option(parser: argparse.ArgumentParser) -> None:
    from cloud.registry_location import LOCATION_HELP

    parser.add_argument("--registry", metavar="LOCATION", help=LOCATION_HELP)


def _hub_options(parser: argparse.ArgumentParser, waits: bool = True) -> None:
    parser.add_argument("--module", default="edge-inference", help="the module's name (default: %(default)s)")
    parser.add_argument("--hub-endpoint", help="IoT Hub base URL (default: https://<HostName>; for labs and tests)")
    if waits:
        parser.add_argument("--priority-base", type=int, default=100, help="priorities start above this (%(default)s)")
        parser.add_argument("--timeout", type=float, default=1800, help="seconds a ring may take (%(default)s)")
        parser.add_argument("--poll", type=float, default=30, help="seconds between fleet checks (%(default)s)")


def _publish_options(parser: argparse.ArgumentParser, required: bool = False) -> None:
    parser.add_argument("--key", type=Path, help=f"ed25519 private key (default: ${KEY_ENV})")
    parser.add_argument("--to", required=required, metavar="DEST", help="where devices fetch the model (as 'release')")
    parser.add_argument("--base-uri", help="for a folder served over HTTP(S): the URL of the folder")
    parser.add_argument("--sas-days", type=int, default=365, help="SAS lifetime for Blob releases (%(default)s)")


def configure(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    plan = actions.add_parser("plan", help="is there anything to deploy? the candidate against production")
    plan.add_argument("name")
    which = plan.add_mutually_exclusive_group()
    which.add_argument("--candidate", type=Path, help="the ONNX file training wrote (found by its sha256)")
    which.add_argument("--version", help="a registered version (default: the latest)")
    _registry_option(plan)
    plan.add_argument("--out", type=Path, help="also write the plan as JSON")

    deploy = actions.add_parser("deploy", help="create (or resume) one ring of a release and wait for its devices")
    deploy.add_argument("--release", type=Path, required=True, help="release JSON written by 'cloud release'")
    deploy.add_argument("--ring", choices=["canary", "fleet"], required=True)
    deploy.add_argument("--target-condition", required=True, help="e.g. \"tags.ring='canary'\"")
    deploy.add_argument("--out", type=Path, help="also write the configuration read back as JSON")
    _hub_options(deploy)

    promote = actions.add_parser("promote", help="point 'production' at a version, keeping the last one as 'previous'")
    promote.add_argument("name")
    promote.add_argument("version")
    _registry_option(promote)

    status = actions.add_parser("status", help="a model's layered deployments on the hub and its devices")
    status.add_argument("name")
    status.add_argument("--json", action="store_true")
    _hub_options(status, waits=False)

    shadow = actions.add_parser(
        "shadow", help="put a release on a ring as a shadow: it answers mirrored live traffic, never clients"
    )
    shadow.add_argument("name", help="the model")
    source = shadow.add_mutually_exclusive_group(required=True)
    source.add_argument("--release", type=Path, help="release JSON written by 'cloud release'")
    source.add_argument("--version", help="a registered version: signed and published here (needs --to, a key)")
    _registry_option(shadow)
    _publish_options(shadow)
    shadow.add_argument("--target-condition", required=True, help="the ring, e.g. \"tags.ring='canary'\"")
    shadow.add_argument("--out", type=Path, help="also write the shadow deployment as JSON")
    _hub_options(shadow)

    agrees = actions.add_parser(
        "promote-if-agrees",
        help="promote the model's shadow to models.<name> on its ring only if every device's shadow agrees",
    )
    agrees.add_argument("name", help="the model")
    agrees.add_argument("--min-agreement", type=float, required=True, help="label agreement each device needs, 0-1")
    agrees.add_argument("--min-compared", type=int, required=True, help="compared requests each device needs")
    agrees.add_argument("--max-mean-abs-diff", type=float, help="also bound the mean absolute output difference")
    agrees.add_argument(
        "--ring", choices=["canary", "fleet"], required=True, help="the rollout ring the promotion creates"
    )
    agrees.add_argument("--out", type=Path, help="also write every device's figures as JSON")
    _hub_options(agrees)

    rollback = actions.add_parser("rollback", help="re-deploy the previous production version, canary then fleet")
    rollback.add_argument("name")
    _registry_option(rollback)
    _publish_options(rollback, required=True)
    rollback.add_argument("--canary-condition", help="default: the canary ring's condition on the hub now")
    rollback.add_argument("--fleet-condition", help="default: the fleet ring's condition on the hub now")
    rollback.add_argument("--out", type=Path, help="also write the release block of the version rolled back to")
    _hub_options(rollback)


def run(args: argparse.Namespace) -> int:
    from cloud.errors import CloudError

    try:
        if args.action == "plan":
            return _plan(args)
        if args.action == "promote":
            return _promote(args)
        if args.action == "deploy":
            return _deploy(args)
        if args.action == "status":
            return _status(args)
        if args.action == "shadow":
            return _shadow(args)
        if args.action == "promote-if-agrees":
            return _promote_if_agrees(args)
        return _rollback(args)
    except CloudError as error:
        sys.stderr.write(f"error: {error.message}\n")
        return error.exit_code


def _open_registry(location: str | None) -> Any:
    from cloud.registry_location import open_registry

    return open_registry(location)


def _client(args: argparse.Namespace) -> Any:
    from cloud.releases.errors import IoTHubError
    from cloud.releases.iothub import HubCredentials, IoTHubClient

    value = os.environ.get(HUB_ENV)
    if not value:
        raise IoTHubError(f"set ${HUB_ENV} to the hub's connection string (kept out of the command line)")
    return IoTHubClient(HubCredentials.from_connection_string(value), endpoint=args.hub_endpoint)


def _rollout(args: argparse.Namespace, client: Any) -> Any:
    from cloud.rollout.deployer import Rollout, Waiting

    waiting = Waiting(timeout_seconds=args.timeout, poll_seconds=args.poll)
    return Rollout(client, module=args.module, priority_base=args.priority_base, waiting=waiting, log=_say)


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _write_json(path: Path | None, document: Any) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


def _plan(args: argparse.Namespace) -> int:
    from cloud.rollout.plan import plan

    decision = plan(_open_registry(args.registry), args.name, candidate_file=args.candidate, version=args.version)
    _write_json(args.out, decision.to_dict())
    _say(decision.reason)
    return 0


def _promote(args: argparse.Namespace) -> int:
    from cloud.rollout.aliases import promote_to_production

    entry, previous = promote_to_production(_open_registry(args.registry), args.name, args.version)
    kept = f"; previous: version {previous.version}" if previous is not None else ""
    _say(f"production: {entry.name} version {entry.version}{kept}")
    return 0


def _single_release(path: Path) -> Any:
    from cloud.releases.errors import PublishError
    from cloud.releases.signing import releases_from_models_block

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise PublishError(f"cannot read release {path}: {error}") from None
    releases = releases_from_models_block(data, str(path))
    if len(releases) != 1:
        raise PublishError(f"{path}: a rollout takes one model's release, found {len(releases)}")
    return releases[0]


def _deploy(args: argparse.Namespace) -> int:
    release = _single_release(args.release)
    with _client(args) as client:
        result = _rollout(args, client).deploy_ring(release, args.ring, args.target_condition)
    _write_json(args.out, result.deployed.to_dict())
    _say(f"{args.ring} ring: {release.name} version {release.version} active on {len(result.devices)} device(s)")
    return 0


def _status(args: argparse.Namespace) -> int:
    from cloud.releases.fleet import model_statuses, status_query, summary
    from cloud.rollout.deployer import Rollout

    with _client(args) as client:
        rollout = Rollout(client, module=args.module)
        deployed = rollout.deployed(args.name)
        rows = model_statuses(client.query(status_query(args.module)), args.name)
    totals = summary(rows).get(args.name, {"active": {}, "failed": {}, "pending": []})
    if args.json:
        _say(json.dumps({"deployments": [d.to_dict() for d in deployed], "devices": totals}, indent=2))
        return 0
    if not deployed:
        _say(f"no rollout of {args.name} on the hub")
    for d in deployed:
        _say(f"{d.id}  rollout {d.rollout}  {d.ring}  version {d.version}  priority {d.priority}  {d.target_condition}")
    active = ", ".join(f"v{v}: {n}" for v, n in sorted(totals["active"].items())) or "none"
    _say(f"{args.name}: active {active}; failed {len(totals['failed'])}; pending {len(totals['pending'])}")
    return 0


def _published_release(args: argparse.Namespace, registry: Any, entry: Any) -> Any:
    """Sign ``entry``'s model and publish it to ``--to``: the release block devices verify."""
    from cloud.errors import CloudError
    from cloud.releases.keys import load_private_key, passphrase_from_env
    from cloud.releases.publish import publisher_for
    from cloud.releases.signing import make_release

    key_path = args.key or (Path(os.environ[KEY_ENV]) if os.environ.get(KEY_ENV) else None)
    if key_path is None:
        raise CloudError(f"no signing key: pass --key or set {KEY_ENV}")
    if not args.to:
        raise CloudError("pass --to: where devices fetch the model")
    private_key = load_private_key(key_path, passphrase_from_env())
    publisher = publisher_for(args.to, base_uri=args.base_uri, sas_days=args.sas_days)
    with tempfile.TemporaryDirectory(prefix="release-") as work:
        model_file = registry.fetch(entry, Path(work))  # refuses a file that no longer matches its sha256
        return make_release(entry.name, entry.version, model_file, entry.sha256, publisher, private_key)


def _shadow_rollout(args: argparse.Namespace, client: Any) -> Any:
    from cloud.rollout.deployer import Waiting
    from cloud.rollout.shadow import ShadowRollout

    waiting = Waiting(timeout_seconds=args.timeout, poll_seconds=args.poll)
    return ShadowRollout(client, module=args.module, priority_base=args.priority_base, waiting=waiting, log=_say)


def _shadow(args: argparse.Namespace) -> int:
    from cloud.errors import CloudError

    if args.release is not None:
        release = _single_release(args.release)
        if release.name != args.name:
            raise CloudError(f"{args.release} is a release of {release.name}, not {args.name}")
    else:
        registry = _open_registry(args.registry)
        release = _published_release(args, registry, registry.get(args.name, args.version))
    with _client(args) as client:
        deployment, rows = _shadow_rollout(args, client).deploy(release, args.target_condition)
    _write_json(args.out, deployment.to_dict())
    _say(f"shadow: {release.name} version {release.version} mirrors live traffic on {len(rows)} device(s)")
    return 0


def _promote_if_agrees(args: argparse.Namespace) -> int:
    from cloud.rollout.shadow import Criteria, ShadowDisagrees

    criteria = Criteria(args.min_agreement, args.min_compared, args.max_mean_abs_diff)
    with _client(args) as client:
        shadows = _shadow_rollout(args, client)
        try:
            verdict, result = shadows.promote_if_agrees(args.name, criteria, args.ring, _rollout(args, client))
        except ShadowDisagrees:
            _write_json(args.out, _figures(shadows.judge(args.name, criteria)))
            raise
    _write_json(args.out, _figures(verdict))
    release = verdict.deployment.release
    _say(
        f"promoted: {release.name} version {release.version} active on {len(result.devices)} device(s) "
        f"of the {args.ring} ring; its shadow deployment is deleted"
    )
    return 0


def _figures(verdict: Any) -> dict[str, Any]:
    return {
        "deployment": verdict.deployment.to_dict(),
        "passed": {device: row.to_dict() for device, row in verdict.passed.items()},
        "disagree": verdict.disagree,
        "short": verdict.short,
    }


def _rollback(args: argparse.Namespace) -> int:
    from cloud.registry import RegistryEntry
    from cloud.releases.signing import models_block
    from cloud.rollout.rollback import rollback
    from edge_module.release import Release

    registry = _open_registry(args.registry)

    def release_of(entry: RegistryEntry) -> Release:
        release: Release = _published_release(args, registry, entry)
        _write_json(args.out, models_block([release]))
        return release

    conditions = {"canary": args.canary_condition, "fleet": args.fleet_condition}
    with _client(args) as client:
        target, _ = rollback(registry, args.name, _rollout(args, client), release_of, conditions)
    _say(
        f"rolled back: {args.name} version {target.previous.version} is production on the fleet again "
        f"(version {target.production.version} is now 'previous')"
    )
    return 0
