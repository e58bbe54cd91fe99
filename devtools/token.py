"""Print a JWT for the local run: ``./dev/token --username admin-user [--ttl 3600]``.

The token is signed with the key ``./dev/up`` generated, so the local processes accept it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from devtools.devkeys import load_dev_keys, mint_token
from shared.version import VERSION

REPO_ROOT = Path(__file__).resolve().parent.parent


def default_dev_dir() -> Path:
    """``$DYNCONFIG_DEV_DIR`` or ``.dev/`` in the repository root."""
    return Path(os.environ.get("DYNCONFIG_DEV_DIR") or REPO_ROOT / ".dev")


class NoDevKeys(Exception):
    """The local run's keys do not exist yet."""

    def __init__(self, keys_dir: Path) -> None:
        super().__init__(f"no dev keys in {keys_dir}; run ./dev/up first")


def dev_token(username: str, ttl_seconds: int, dev_dir: Path | None = None) -> str:
    """A token for ``username`` signed with the local run's key (``dev_dir`` defaults to ``.dev``)."""
    keys_dir = (dev_dir or default_dev_dir()) / "keys"
    keys = load_dev_keys(keys_dir)
    if keys is None:
        raise NoDevKeys(keys_dir)
    return mint_token(keys.signing_key_path, keys.kid, username, ttl_seconds=ttl_seconds)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, mint, print; exit 2 with one line when the dev keys are missing."""
    parser = argparse.ArgumentParser(prog="dev/token", description="Mint a JWT for the local DynConfig run.")
    parser.add_argument("--username", required=True, help="the token's username claim (admins: admin-user)")
    parser.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds (default 3600)")
    parser.add_argument("--dir", type=Path, default=None, help="dev data directory (default .dev)")
    parser.add_argument("--version", action="version", version=f"dev/token {VERSION}")
    args = parser.parse_args(argv)
    if not args.username.strip():
        parser.error("--username must not be empty")
    if args.ttl < 1:
        parser.error("--ttl must be at least 1")
    try:
        print(dev_token(args.username, args.ttl, args.dir))
    except NoDevKeys as exc:
        print(f"dev/token: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
