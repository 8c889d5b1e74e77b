"""The model registry in S3: versions under models/{version}/, the production pointer beside them.

Only boto3 here, so the gateway lists and promotes models without the ML stack. A version exists
once its manifest.json does: the manifest is written last, after every file it lists, and never
changes. models/production.json changes only through `promote`, by compare-and-swap on its ETag;
models/challenger.json names the version scored beside it on a share of live traffic, and is
cleared when that version is promoted or dismissed. Each observer hears every pointer that moved
(an alias and its version, None when cleared); one that fails costs a warning.
"""

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from types import EllipsisType
from typing import TYPE_CHECKING

from botocore.exceptions import ClientError

from shared.contracts.errors import ChallengerNotFound, Conflict, NoProductionModel
from shared.contracts.models import (
    CARD,
    CHALLENGER,
    HISTORY,
    MANIFEST,
    PRODUCTION,
    VERSION_PATTERN,
    ChallengerPointer,
    ModelInfo,
    ModelRecord,
    ProductionPointer,
    checked_version,
    no_such_version,
)
from shared.contracts.results import TrainingHistory
from shared.settings import StorageSettings
from shared.storage import error_code, is_missing, s3_client, s3_retry

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

_CAS_ATTEMPTS = 5
_JSON = "application/json"
_LOST_RACE = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}
_NO_CONDITIONAL_WRITES = {"NotImplemented", "501"}

log = logging.getLogger(__name__)

PointerObserver = Callable[[str, str | None], None]


class ModelRegistry:
    def __init__(self, s3: "S3Client", storage: StorageSettings) -> None:
        self.s3 = s3
        self.bucket = storage.bucket
        self.prefix = storage.models_prefix
        self.incoming_prefix = storage.incoming_prefix
        self._manifests: dict[str, ModelInfo] = {}
        self.observers: list[PointerObserver] = []

    @classmethod
    def from_settings(cls, storage: StorageSettings) -> "ModelRegistry":
        return cls(s3_client(storage), storage)

    def key(self, version: str, name: str) -> str:
        return f"{self.prefix}{version}/{name}"

    def versions(self) -> list[ModelInfo]:
        """Every complete version, newest first; a folder without a manifest is not one."""
        found: list[ModelInfo] = []
        pages = self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix, Delimiter="/"
        )
        for page in pages:
            for common in page.get("CommonPrefixes", []):
                version = common.get("Prefix", "")[len(self.prefix) :].rstrip("/")
                if VERSION_PATTERN.fullmatch(version):
                    info = self._manifest(version)
                    if info is not None:
                        found.append(info)
        return sorted(found, key=lambda info: (info.created_at, info.version), reverse=True)

    def get(self, version: str) -> ModelInfo:
        info = self._manifest(checked_version(version))
        if info is None:
            raise no_such_version(version)
        return info

    def record(self, version: str) -> ModelRecord:
        info = self.get(version)
        card = read_object(self.s3, self.bucket, self.key(version, CARD))
        history = read_object(self.s3, self.bucket, self.key(version, HISTORY))
        return ModelRecord(
            info=info,
            card=None if card is None else card.decode(),
            history=None if history is None else TrainingHistory.model_validate_json(history),
        )

    def production(self) -> ProductionPointer | None:
        return self._production()[0]

    def production_version(self) -> str:
        """The version in production; where there is none, NoProductionModel says how to get one."""
        pointer = self.production()
        if pointer is None:
            raise NoProductionModel(
                f"No model serves yet: upload an archive.zip under s3://{self.bucket}/"
                f"{self.incoming_prefix} (or POST /v1/jobs with a pipeline job) to train one; "
                "the first model to finish is promoted."
            )
        return pointer.version

    def promote(
        self, version: str, reason: str, *, expected: str | EllipsisType | None = ...
    ) -> ProductionPointer:
        """Point production at `version`; with `expected`, only if production is still that.

        Raises ModelNotFound for an unknown version and Conflict when `expected` no longer
        holds. Promoting the version already in production changes nothing.
        """
        self.get(version)
        for _ in range(_CAS_ATTEMPTS):
            current, etag = self._production()
            current_version = current.version if current else None
            if current is not None and current.version == version:
                return current
            if expected is not ... and expected != current_version:
                raise Conflict(
                    f"production is {current_version or 'unset'}, no longer {expected or 'unset'}",
                    details={"production": current_version, "expected": expected},
                )
            pointer = ProductionPointer(
                version=version,
                promoted_at=datetime.now(UTC),
                reason=reason,
                previous=current_version,
            )
            if self._put_pointer(pointer, etag):
                log.info("production is now %s (was %s): %s", version, current_version, reason)
                self._moved("production", version)
                challenger = self.challenger()
                if challenger is not None and challenger.version == version:
                    self._delete_challenger(f"{version} was promoted")
                return pointer
        raise Conflict(
            "production.json kept changing while promoting; try again",
            details={"version": version},
        )

    def challenger(self) -> ChallengerPointer | None:
        body = read_object(self.s3, self.bucket, self.prefix + CHALLENGER)
        return None if body is None else ChallengerPointer.model_validate_json(body)

    def name_challenger(self, version: str, share: float, reason: str = "") -> ChallengerPointer:
        """Score `version` on `share` of live traffic beside production (replacing any
        challenger). ModelNotFound for an unknown version, Conflict for production itself."""
        self.get(version)
        if version == self.production_version():
            raise Conflict(
                f"{version} is production; name another version as its challenger",
                details={"version": version},
            )
        pointer = ChallengerPointer(
            version=version, share=share, named_at=datetime.now(UTC), reason=reason
        )
        body = pointer.model_dump_json(indent=2).encode()
        s3_retry(self.s3.put_object)(
            Bucket=self.bucket, Key=self.prefix + CHALLENGER, Body=body, ContentType=_JSON
        )
        log.info("challenger is now %s on %.0f%% of traffic", version, share * 100)
        self._moved("challenger", version)
        return pointer

    def dismiss_challenger(self, reason: str = "dismissed") -> ChallengerPointer:
        """Stop scoring the challenger; NotFound where none is named."""
        pointer = self.challenger()
        if pointer is None:
            raise ChallengerNotFound("no challenger is named")
        self._delete_challenger(reason)
        return pointer

    def _delete_challenger(self, reason: str) -> None:
        s3_retry(self.s3.delete_object)(Bucket=self.bucket, Key=self.prefix + CHALLENGER)
        log.info("challenger cleared: %s", reason)
        self._moved("challenger", None)

    def _moved(self, alias: str, version: str | None) -> None:
        for observer in self.observers:
            try:
                observer(alias, version)
            except Exception as exc:
                log.warning("the %s pointer's observer failed: %s", alias, exc)

    def _manifest(self, version: str) -> ModelInfo | None:
        """A version's manifest, read once: it is written last and never changes."""
        if (known := self._manifests.get(version)) is not None:
            return known
        body = read_object(self.s3, self.bucket, self.key(version, MANIFEST))
        if body is None:
            return None
        info = self._manifests[version] = ModelInfo.model_validate_json(body)
        return info

    def _production(self) -> tuple[ProductionPointer | None, str | None]:
        body, etag = read_with_etag(self.s3, self.bucket, self.prefix + PRODUCTION)
        return (None, None) if body is None else (ProductionPointer.model_validate_json(body), etag)

    def _put_pointer(self, pointer: ProductionPointer, etag: str | None) -> bool:
        """Write the pointer if production.json still has `etag` (is absent when None)."""
        body = pointer.model_dump_json(indent=2).encode()
        return put_if(self.s3, self.bucket, self.prefix + PRODUCTION, body, etag)


@s3_retry
def put_if(s3: "S3Client", bucket: str, key: str, body: bytes, etag: str | None) -> bool:
    """Write a JSON object if it still has `etag` (is still absent when None): False when another
    writer got there first. A store without conditional writes is written to plainly.

    Tried again while the store is away: a write that landed but whose answer was lost then
    reads as a lost race, and the caller's next read finds its own object."""
    try:
        if etag:
            s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType=_JSON, IfMatch=etag)
        else:
            s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType=_JSON, IfNoneMatch="*")
    except ClientError as exc:
        code = error_code(exc)
        if code in _LOST_RACE:
            return False
        if code not in _NO_CONDITIONAL_WRITES:
            raise
        log.warning(
            "the store refuses conditional writes; writing %s without compare-and-swap", key
        )
        s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType=_JSON)
    return True


def read_with_etag(s3: "S3Client", bucket: str, key: str) -> tuple[bytes | None, str | None]:
    """The object's bytes and ETag, or (None, None) where there is none."""
    try:
        response = s3.get_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if is_missing(exc):
            return None, None
        raise
    return response["Body"].read(), response["ETag"]


def read_object(s3: "S3Client", bucket: str, key: str) -> bytes | None:
    """The object's bytes, or None where there is none."""
    try:
        return s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        if is_missing(exc):
            return None
        raise
