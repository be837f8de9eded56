from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from cloud.registry_location import LOCATION_HELP

NAME = "release"
HELP = (
    "publish a registered model version and write its signed twin release block "
    "(the file is re-checked against the sha256 recorded at registration first)"
)
KEY_ENV = "CLOUD_SIGNING_KEY"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="model name in the registry")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--version", help="registered version (default: the latest)")
    which.add_argument("--alias", help="registry alias, e.g. production")
    parser.add_argument("--registry", metavar="LOCATION", help=LOCATION_HELP)
    parser.add_argument(
        "--key",
        type=Path,
        default=None,
        help=f"ed25519 private key file (default: ${KEY_ENV}); passphrase: $CLOUD_SIGNING_KEY_PASSPHRASE",
    )
    parser.add_argument(
        "--to",
        required=True,
        metavar="DEST",
        help="where devices fetch the model: a folder, file:///folder, or az://<container>[/<prefix>] "
        "(Azure Blob, connection string from $AZURE_STORAGE_CONNECTION_STRING)",
    )
    parser.add_argument(
        "--base-uri", help="for a folder served over HTTP(S): the URL of the folder (default: a file:// URI)"
    )
    parser.add_argument(
        "--sas-days",
        type=int,
        default=365,
        help="read-only SAS lifetime for Blob releases; cover the longest "
        "time a device may stay offline (default: %(default)s)",
    )
    parser.add_argument("--out", type=Path, help="also write the release block to this JSON file")


def run(args: argparse.Namespace) -> int:
    from cloud.errors import CloudError
    from cloud.registry_location import open_registry
    from cloud.releases.keys import load_private_key, passphrase_from_env
    from cloud.releases.publish import publisher_for
    from cloud.releases.signing import make_release, models_block

    try:
        key_path = args.key or (Path(os.environ[KEY_ENV]) if os.environ.get(KEY_ENV) else None)
        if key_path is None:
            raise CloudError(f"no signing key: pass --key or set {KEY_ENV} (create one with 'keys new')")
        private_key = load_private_key(key_path, passphrase_from_env())
        registry = open_registry(args.registry)
        entry = registry.get(args.name, version=args.version, alias=args.alias)
        publisher = publisher_for(args.to, base_uri=args.base_uri, sas_days=args.sas_days)
        with tempfile.TemporaryDirectory(prefix="release-") as work:
            model_file = registry.fetch(entry, Path(work))  # refuses a file that no longer matches its sha256
            release = make_release(entry.name, entry.version, model_file, entry.sha256, publisher, private_key)
    except CloudError as error:
        sys.stderr.write(f"error: {error.message}\n")
        return error.exit_code
    text = json.dumps(models_block([release]), indent=2) + "\n"
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
    sys.stdout.write(text)
    return 0
