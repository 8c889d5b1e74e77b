"""Where training keeps its checkpoints: a folder of files per step, and which step is the latest.

The latest pointer is written after the step's files, so a crash mid-save leaves the previous
checkpoint in force; older steps are deleted only after it.
"""

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from pipeline.registry import delete_prefix, download_prefix, upload_dir
from shared.registry import read_object
from shared.storage import s3_retry

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

LATEST = "latest.json"


def _step_name(step: int) -> str:
    return f"step-{step:09d}"


class CheckpointStore(Protocol):
    def latest(self) -> int | None: ...

    def fetch(self, step: int, dest: Path) -> Path:
        """A local folder with the files saved at `step` (dest, or where they already are)."""
        ...

    def save(self, step: int, directory: Path) -> None: ...

    def clear(self) -> None: ...


class LocalCheckpoints:
    def __init__(self, root: Path) -> None:
        self.root = root

    def latest(self) -> int | None:
        try:
            step: int = json.loads((self.root / LATEST).read_text())["step"]
        except FileNotFoundError:
            return None
        return step

    def fetch(self, step: int, dest: Path) -> Path:
        return self.root / _step_name(step)

    def save(self, step: int, directory: Path) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        target = self.root / _step_name(step)
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(directory, target)
        pointer = self.root / f".{LATEST}.part"
        pointer.write_text(json.dumps({"step": step}))
        os.replace(pointer, self.root / LATEST)
        for old in self.root.glob("step-*"):
            if old != target:
                shutil.rmtree(old, ignore_errors=True)

    def clear(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


class S3Checkpoints:
    """Checkpoints under an S3 prefix such as checkpoints/{job_id}/ (its final/ is not theirs)."""

    def __init__(self, s3: "S3Client", bucket: str, prefix: str) -> None:
        self.s3 = s3
        self.bucket = bucket
        self.prefix = prefix

    def latest(self) -> int | None:
        body = read_object(self.s3, self.bucket, self.prefix + LATEST)
        if body is None:
            return None
        step: int = json.loads(body)["step"]
        return step

    def fetch(self, step: int, dest: Path) -> Path:
        return download_prefix(self.s3, self.bucket, f"{self.prefix}{_step_name(step)}/", dest)

    @s3_retry
    def save(self, step: int, directory: Path) -> None:
        names = sorted(path.name for path in directory.iterdir() if path.is_file())
        upload_dir(self.s3, self.bucket, f"{self.prefix}{_step_name(step)}/", directory, names)
        self.s3.put_object(
            Bucket=self.bucket,
            Key=self.prefix + LATEST,
            Body=json.dumps({"step": step}).encode(),
            ContentType="application/json",
        )
        for old in self._steps():
            if old != step:
                delete_prefix(self.s3, self.bucket, f"{self.prefix}{_step_name(old)}/")

    def clear(self) -> None:
        for old in self._steps():
            delete_prefix(self.s3, self.bucket, f"{self.prefix}{_step_name(old)}/")
        self.s3.delete_object(Bucket=self.bucket, Key=self.prefix + LATEST)

    def _steps(self) -> list[int]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix + "step-", Delimiter="/"
        )
        return [
            int(common.get("Prefix", "").rstrip("/").rsplit("-", 1)[1])
            for page in pages
            for common in page.get("CommonPrefixes", [])
        ]
