"""The sha256 of a file, as datasets and model manifests record it."""

import hashlib
from pathlib import Path


def file_sha256(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()
