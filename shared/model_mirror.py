"""The model registry mirrored into MLflow's, where a tracking server is configured.

Each registered version becomes a model version of `settings.tracking.registered_model`
(description: its card; source: its folder in S3; linked to its training run; tagged
`agnews_version`), and the production and challenger pointers are aliases there, moved as the
pointers move. S3 stays the source of truth: nothing reads the mirror, and a tracking server that
fails or does not answer costs a warning, never a registration or a promotion.

MLflow's REST API over httpx, not the mlflow package, so that the gateway, which moves the
aliases when it promotes, stays light. The client honours MLflow's own MLFLOW_TRACKING_TOKEN or
MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, as the mlflow client does.
"""

import logging
import os
import urllib.request
from collections.abc import Callable
from typing import Any

import httpx
from pydantic import BaseModel

from shared.registry import ModelRegistry
from shared.settings import TrackingSettings

log = logging.getLogger(__name__)

VERSION_TAG = "agnews_version"
RUN_TAG = "model_version"  # the tag on a version's training run (pipeline.tracking)


def answers(uri: str, timeout_s: float) -> bool:
    """Whether an HTTP tracking server answers its health check; other URIs are not probed."""
    if not uri.startswith(("http://", "https://")):
        return True
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s):
            return True
    except OSError:  # URLError and timeouts included
        return False


def source_of(registry: ModelRegistry, version: str) -> str:
    """The S3 URI of a version's folder: what its MLflow model version points at."""
    return f"s3://{registry.bucket}/{registry.key(version, '')}"


class MlflowError(Exception):
    """An MLflow REST call that was refused."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{code or status}: {message}")
        self.code = code


class _ModelVersion(BaseModel):
    version: str
    run_id: str = ""
    description: str = ""
    source: str = ""


class _ModelVersions(BaseModel):
    model_versions: list[_ModelVersion] = []


class _RunInfo(BaseModel):
    run_id: str


class _Run(BaseModel):
    info: _RunInfo


class _Runs(BaseModel):
    runs: list[_Run] = []


class _Api:
    """MLflow's REST calls that the mirror makes, on one connection."""

    def __init__(self, client: httpx.Client, model: str, experiment: str) -> None:
        self.client = client
        self.model = model
        self.experiment = experiment

    def call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = self.client.request(method, path, **kwargs)
        if response.is_success:
            body: dict[str, Any] = response.json() if response.content else {}
            return body
        try:
            error = response.json()
        except ValueError:
            error = {}
        raise MlflowError(
            response.status_code,
            str(error.get("error_code", "")),
            str(error.get("message", response.text[:200])),
        )

    def ensure_model(self) -> None:
        try:
            self.call("POST", "registered-models/create", json={"name": self.model})
        except MlflowError as exc:
            if exc.code != "RESOURCE_ALREADY_EXISTS":
                raise

    def find(self, version: str) -> _ModelVersion | None:
        """The model version mirroring `version`, if there is one."""
        query = f"name = '{self.model}' AND tags.{VERSION_TAG} = '{version}'"
        body = self.call("GET", "model-versions/search", params={"filter": query})
        found = _ModelVersions.model_validate(body).model_versions
        return min(found, key=lambda known: int(known.version)) if found else None

    def create(self, version: str, run_id: str | None, card: str, source: str) -> _ModelVersion:
        request: dict[str, Any] = {
            "name": self.model,
            "source": source,
            "description": card,
            "tags": [{"key": VERSION_TAG, "value": version}],
        }
        if run_id:
            request["run_id"] = run_id
        body = self.call("POST", "model-versions/create", json=request)
        return _ModelVersion.model_validate(body["model_version"])

    def run_of(self, version: str) -> str | None:
        """The training run pipeline.tracking wrote for `version`, if there is one."""
        try:
            found = self.call(
                "GET", "experiments/get-by-name", params={"experiment_name": self.experiment}
            )
        except MlflowError as exc:
            if exc.code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise
        request = {
            "experiment_ids": [found["experiment"]["experiment_id"]],
            "filter": f"tags.{RUN_TAG} = '{version}'",
            "max_results": 1,
        }
        runs = _Runs.model_validate(self.call("POST", "runs/search", json=request)).runs
        return runs[0].info.run_id if runs else None

    def set_alias(self, alias: str, number: str) -> None:
        request = {"name": self.model, "alias": alias, "version": number}
        self.call("POST", "registered-models/alias", json=request)

    def delete_alias(self, alias: str) -> None:
        self.call("DELETE", "registered-models/alias", json={"name": self.model, "alias": alias})


class MlflowMirror:
    """Mirrors versions and pointers into MLflow's model registry; never raises.

    With `registry`, a version that reaches a pointer without having been mirrored (registered
    while the server was down, or before mirroring was on) is mirrored then, its card read from
    S3 and its run found by its tag."""

    def __init__(self, tracking: TrackingSettings, registry: ModelRegistry | None = None) -> None:
        self.tracking = tracking
        self.registry = registry

    def register_version(self, version: str, run_id: str | None, card: str, source: str) -> None:
        """`version` as a model version, linked to `run_id`, its card as description; a version
        mirrored already is left as it is."""

        def register(api: _Api) -> None:
            api.ensure_model()
            if api.find(version) is None:
                created = api.create(version, run_id, card, source)
                log.info("model %s is model version %s in MLflow", version, created.version)

        self._mirror(f"model {version}", register)

    def move_alias(self, alias: str, version: str | None) -> None:
        """Point `alias` at the model version mirroring `version`; None deletes the alias."""

        def move(api: _Api) -> None:
            if version is None:
                api.delete_alias(alias)
                return
            mirrored = api.find(version) or self._late(api, version)
            if mirrored is None:
                raise LookupError(f"{version} is not in MLflow's model registry")
            api.set_alias(alias, mirrored.version)

        self._mirror(f"the {alias} alias ({version or 'cleared'})", move)

    def observe(self, alias: str, version: str | None) -> None:
        """A ModelRegistry observer: each pointer that moves moves its alias."""
        self.move_alias(alias, version)

    def _late(self, api: _Api, version: str) -> _ModelVersion | None:
        if self.registry is None:
            return None
        card = self.registry.record(version).card or ""
        api.ensure_model()
        created = api.create(version, api.run_of(version), card, source_of(self.registry, version))
        log.info("model %s mirrored to MLflow as model version %s", version, created.version)
        return created

    def _mirror(self, what: str, action: Callable[[_Api], None]) -> None:
        uri = self.tracking.uri
        if not uri:
            return
        if not uri.startswith(("http://", "https://")):
            log.warning(
                "%s: not mirrored; MLflow's model registry is mirrored to an HTTP tracking "
                "server, not %s",
                what,
                uri,
            )
            return
        timeout = self.tracking.probe_timeout_s
        if not answers(uri, timeout):
            log.warning("%s: not mirrored; MLflow at %s does not answer", what, uri)
            return
        try:
            with httpx.Client(
                base_url=f"{uri.rstrip('/')}/api/2.0/mlflow/",
                timeout=timeout,
                headers=_auth_headers(),
                auth=_basic_auth(),
            ) as client:
                action(_Api(client, self.tracking.registered_model, self.tracking.experiment))
        except Exception as exc:
            log.warning("%s: not mirrored to MLflow's model registry at %s: %s", what, uri, exc)


def mirrored(registry: ModelRegistry, tracking: TrackingSettings) -> ModelRegistry:
    """`registry`, its pointers mirrored as aliases in MLflow where a tracking URI is set."""
    if tracking.uri:
        registry.observers.append(MlflowMirror(tracking, registry).observe)
    return registry


def _auth_headers() -> dict[str, str]:
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


def _basic_auth() -> httpx.BasicAuth | None:
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    password = os.environ.get("MLFLOW_TRACKING_PASSWORD")
    return httpx.BasicAuth(user, password) if user and password else None
