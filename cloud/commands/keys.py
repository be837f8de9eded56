from __future__ import annotations

import argparse
import sys
from pathlib import Path

NAME = "keys"
HELP = "create ed25519 release-signing keys (the public half is what EDGE_TRUSTED_KEYS reads)"


def configure(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    new = actions.add_parser("new", help="write <name>.key (mode 0600) and <name>.pub.pem")
    new.add_argument("--dir", type=Path, default=Path("keys"), help="output folder (default: %(default)s)")
    new.add_argument("--name", default="release", help="file name stem (default: %(default)s)")
    show = actions.add_parser("public", help="print the public key (PEM) and fingerprint of a private key")
    show.add_argument("key", type=Path, help="private key file")


def run(args: argparse.Namespace) -> int:
    from cloud.errors import CloudError
    from cloud.releases.keys import fingerprint, generate_key_pair, load_private_key, passphrase_from_env, public_pem

    try:
        if args.action == "new":
            pair = generate_key_pair(args.dir, args.name, passphrase_from_env())
            sys.stdout.write(
                f"private key: {pair.private_path} (mode 600; keep it secret, e.g. in a CI secret store)\n"
                f"public key:  {pair.public_path} (install on devices; point EDGE_TRUSTED_KEYS at it)\n"
                f"fingerprint: {pair.fingerprint}\n"
            )
            return 0
        key = load_private_key(args.key, passphrase_from_env())
        sys.stdout.write(public_pem(key.public_key()))
        sys.stderr.write(f"fingerprint: {fingerprint(key.public_key())}\n")
        return 0
    except CloudError as error:
        sys.stderr.write(f"error: {error.message}\n")
        return error.exit_code
