"""`python -m gateway.keys new NAME --scopes predict,read`: a fresh API key, printed once, and the
entry for AGNEWS_API_KEYS that holds only its sha256."""

import argparse
import json
import secrets
import sys
from typing import get_args

from shared.contracts.keys import ApiKey, KeyScope, key_digest


def new_key(name: str, scopes: list[str]) -> tuple[str, ApiKey]:
    key = f"agn_{secrets.token_urlsafe(32)}"
    entry = ApiKey.model_validate({"name": name, "sha256": key_digest(key), "scopes": scopes})
    return key, entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.keys", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    new = commands.add_parser("new", help="make a key")
    new.add_argument("name", help="the key's name; the jobs it creates record it as their owner")
    new.add_argument(
        "--scopes",
        default="predict,read",
        help=f"comma-separated, of {', '.join(get_args(KeyScope))} (default: predict,read)",
    )
    args = parser.parse_args(argv)
    scopes = [scope.strip() for scope in args.scopes.split(",") if scope.strip()]
    try:
        key, entry = new_key(args.name, scopes)
    except ValueError as exc:
        parser.error(str(exc))
    print(f"key (shown once; give it to its user): {key}")
    print("entry for AGNEWS_API_KEYS (a JSON list of such entries):")
    print(json.dumps(entry.model_dump(mode="json")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
