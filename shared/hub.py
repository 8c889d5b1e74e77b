"""Hub models named with the commit they are loaded at: `org/model@REVISION`. A branch or tag
moves; only a full commit hash pins what the hub serves."""

import re
from pathlib import Path
from typing import NamedTuple

COMMIT = re.compile(r"[0-9a-f]{40}")
PINNED_RULE = "a hub model is named with the commit it is loaded at: org/model@<40-hex commit>"


class HubModel(NamedTuple):
    repo_id: str
    revision: str | None


def hub_model(name: str) -> HubModel:
    """The repository and revision of `org/model@REVISION`; a name without `@`, or a local
    folder (whatever its name holds), has no revision."""
    if Path(name).is_dir():
        return HubModel(name, None)
    repo_id, at, revision = name.rpartition("@")
    if not at or not repo_id:
        return HubModel(name, None)
    return HubModel(repo_id, revision)


def is_pinned(name: str) -> bool:
    revision = hub_model(name).revision
    return revision is not None and COMMIT.fullmatch(revision) is not None


def pinned_entry(entry: str) -> str:
    """An allowlist entry: a hub model pinned to a commit, or an absolute path (a folder on the
    workers' disk); ValueError naming the rule otherwise."""
    if entry.startswith("/") or is_pinned(entry):
        return entry
    raise ValueError(f"{entry!r} is not pinned; {PINNED_RULE}, or an absolute folder path")
