"""`python -m gateway.keys new NAME --scopes predict,read`: a fresh API key, printed once, and the
entry for AGNEWS_API_KEYS that holds only its sha256.

`python -m gateway.keys revoke NAME`: ends every browser session of the key NAME (within
AGNEWS_SESSION_EPOCH_CACHE_S) through the Redis of AGNEWS_REDIS_URL. The key itself still works:
to end it, replace or remove its entry in AGNEWS_API_KEYS."""

import argparse
import json
import secrets
import sys
from typing import get_args

from gateway.epochs import revoke
from shared.contracts.keys import ApiKey, KeyScope, key_digest
from shared.redis_clients import sync_client
from shared.settings import get_settings


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
    ended = commands.add_parser("revoke", help="end every session of a key")
    ended.add_argument("name", help="the key's name")
    args = parser.parse_args(argv)
    if args.command == "revoke":
        return revoke_sessions(args.name)
    scopes = [scope.strip() for scope in args.scopes.split(",") if scope.strip()]
    try:
        key, entry = new_key(args.name, scopes)
    except ValueError as exc:
        parser.error(str(exc))
    print(f"key (shown once; give it to its user): {key}")
    print("entry for AGNEWS_API_KEYS (a JSON list of such entries):")
    print(json.dumps(entry.model_dump(mode="json")))
    return 0


def revoke_sessions(name: str) -> int:
    settings = get_settings()
    client = sync_client(settings.redis)
    try:
        epoch = revoke(client, settings.redis.key_prefix, name)
    finally:
        client.close()
    print(
        f"sessions of {name!r} revoked (epoch {epoch}): every gateway refuses its cookies within "
        f"{settings.access.session_epoch_cache_s:g} s. The key itself still works; to end it, "
        "replace or remove its entry in AGNEWS_API_KEYS."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
