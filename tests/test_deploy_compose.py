"""Dockerfiles, docker-compose.yml and the CircleCI pipeline: their validators, and what they
promise (pinned images, non-root users, health checks, the local stack's settings, main-only
deploys, no credentials)."""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.contracts.stages import QUEUES
from shared.redis_clients import SERVER_CONFIG
from shared.settings import Settings
from shared.storage import WEBHOOK_PATH
from stack.local import Webhook
from tests.deploy_support import CIRCLECI, COMPOSE, DOCKERFILES, ROOT, TEMPLATES, run, tool

SETTINGS = {f"AGNEWS_{name.upper()}" for name in Settings.flat_names()}
# What docker compose needs before it starts anything (deploy/README.md says so).
REQUIRED = {
    "AGNEWS_API_KEYS": '[{"name": "me", "sha256": "' + "0" * 64 + '", "scopes": ["admin"]}]',
    "AGNEWS_S3_SECRET_ACCESS_KEY": "an-s3-secret-of-this-test",
    "AGNEWS_LISTENER_TOKEN": "a-webhook-token-of-this-test",
}
GPU_COMPOSE = ROOT / "docker-compose.gpu.yml"
GATEWAY = ROOT / "deploy" / "docker" / "gateway.Dockerfile"


def test_the_dockerfiles_are_the_gateway_and_the_workers() -> None:
    assert [path.name for path in DOCKERFILES] == ["gateway.Dockerfile", "worker.Dockerfile"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_hadolint_passes(dockerfile: Path) -> None:
    result = run(tool("hadolint"), "--failure-threshold", "info", str(dockerfile))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""


def _stages(dockerfile: Path) -> dict[str, list[str]]:
    """Each stage's instructions (continuation lines joined), by stage name."""
    text = re.sub(r"\\\n\s*", " ", dockerfile.read_text())
    stages: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        if line.startswith("FROM "):
            current = []
            stages[line.split(" AS ")[-1] if " AS " in line else "final"] = current
        if line and not line.startswith("#"):
            current.append(line)
    return stages


def _args(dockerfile: Path) -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", dockerfile.read_text(), re.MULTILINE))


@pytest.mark.parametrize(
    ("dockerfile", "stage"),
    [
        ("gateway.Dockerfile", "gateway"),
        ("worker.Dockerfile", "worker"),
        ("worker.Dockerfile", "worker-cuda"),
    ],
)
def test_each_image_is_pinned_unprivileged_and_checks_its_health(
    dockerfile: str, stage: str
) -> None:
    path = ROOT / "deploy" / "docker" / dockerfile
    instructions = _stages(path)[stage]
    assert "USER 10001:10001" in instructions
    assert any(line.startswith("HEALTHCHECK ") for line in instructions)
    assert any(line.startswith("CMD ") for line in instructions)


# Each base image by its tag and the digest of the tag's multi-platform index, as published on
# Docker Hub (docs/security.md says where each digest was read).
BASE_IMAGES = {
    "PYTHON_IMAGE": "python:3.11.14-slim-bookworm@sha256:"
    "65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d",
    "CUDA_IMAGE": "nvidia/cuda:12.8.1-base-ubuntu24.04@sha256:"
    "133c78a0575303be34164d0b90137a042172bdf60696af01a3c424ab402d86e2",
}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_every_base_image_is_pinned_by_digest(dockerfile: Path) -> None:
    args = _args(dockerfile)
    stages = set(_stages(dockerfile))
    for line in dockerfile.read_text().splitlines():
        if not line.startswith("FROM "):
            continue
        base = line.split()[1]
        if base in stages:
            continue
        image = args[base.removeprefix("${").removesuffix("}")] if base.startswith("$") else base
        assert re.fullmatch(r"[\w/.-]+:\d+\.\d+\.\d+-[\w.-]+@sha256:[0-9a-f]{64}", image), line
        assert image in BASE_IMAGES.values(), image
    python = args["PYTHON_IMAGE"]
    assert python == BASE_IMAGES["PYTHON_IMAGE"]


@pytest.mark.parametrize(
    ("dockerfile", "stage"),
    [
        ("gateway.Dockerfile", "gateway"),
        ("worker.Dockerfile", "worker"),
        ("worker.Dockerfile", "worker-cuda"),
    ],
)
def test_each_image_runs_from_a_directory_its_user_cannot_write(
    dockerfile: str, stage: str
) -> None:
    """`python -m` puts the working directory first on the import path: a file written there
    would be imported. The runtime user owns its home and data directory, never the working
    directory, which root creates before USER."""
    instructions = _stages(ROOT / "deploy" / "docker" / dockerfile)[stage]
    user = instructions.index("USER 10001:10001")
    workdirs = [i for i, line in enumerate(instructions) if line.startswith("WORKDIR ")]
    assert workdirs, stage
    assert all(i < user for i in workdirs), "WORKDIR after USER is created as the user's"
    workdir = instructions[workdirs[-1]].split()[1]
    text = "\n".join(instructions)
    [home] = re.findall(r"--home-dir (\S+)", text)
    [data] = re.findall(r"AGNEWS_DATA_DIR=(\S+)", text)
    for writable in (home, data, "/tmp", "/var/tmp"):
        assert not Path(workdir).is_relative_to(writable), (workdir, writable)
    assert not re.search(rf"(chown|chmod)[^\n]*{re.escape(workdir)}", text)
    assert not re.search(r"--chown", text)


def test_the_gateway_image_has_no_torch_and_the_worker_images_take_theirs_from_pytorch() -> None:
    stages = _stages(ROOT / "deploy" / "docker" / "gateway.Dockerfile")
    gateway = "\n".join(line for instructions in stages.values() for line in instructions)
    assert "torch" not in gateway
    assert "[ml]" not in gateway
    stages = _stages(ROOT / "deploy" / "docker" / "worker.Dockerfile")
    [cpu] = [line for line in stages["deps-cpu"] if line.startswith("RUN ")]
    assert "--index-url https://download.pytorch.org/whl/cpu" in cpu
    assert "-r requirements/torch-cpu.txt" in cpu
    [cuda] = [line for line in stages["deps-cuda"] if line.startswith("RUN ")]
    assert "torch==2.13.0" in cuda
    assert (
        "download.pytorch.org/whl/cu"
        in _args(ROOT / "deploy" / "docker" / "worker.Dockerfile")["TORCH_CUDA_INDEX_URL"]
    )


def test_the_gateway_image_copies_neither_workers_nor_pipeline_and_needs_neither() -> None:
    copies = [line.split()[1:-1] for line in _stages(GATEWAY)["build"] if line.startswith("COPY ")]
    sources = {source.split("/")[0] for line in copies for source in line}
    assert sources == {
        "pyproject.toml",
        "README.md",
        "requirements",
        "shared",
        "gateway",
        "stack",
        "deploy",
    }
    # What the image runs: the gateway, the backlog exporter and compose's bucket-creating job.
    code = (
        "import sys, gateway.__main__, deploy.backlog_exporter, stack.local; "
        "print(sorted(name for name in sys.modules "
        "if name.split('.')[0] in ('workers', 'pipeline', 'torch', 'transformers')))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert loaded.stdout.strip() == "[]"


def _entry_points() -> set[str]:
    """Every module the deployment, the local stack and the guides start with `python -m`."""
    files = [COMPOSE, GPU_COMPOSE, *DOCKERFILES, *TEMPLATES.glob("*.yaml"), ROOT / "Makefile"]
    files += [ROOT / "stack" / "local.py", ROOT / "README.md", ROOT / "deploy" / "README.md"]
    pattern = re.compile(r'python -m ([\w.]+)|"-m", "([\w.]+)"')
    return {"".join(match) for path in files for match in pattern.findall(path.read_text())}


def test_every_module_started_with_python_m_exists() -> None:
    entry_points = _entry_points()
    assert {"gateway", "workers", "workers.listener", "deploy.backlog_exporter"} <= entry_points
    for module in sorted(entry_points):
        spec = importlib.util.find_spec(module)
        assert spec is not None, module
        if spec.submodule_search_locations is not None:
            assert importlib.util.find_spec(f"{module}.__main__") is not None, module


def test_the_build_context_is_an_allowlist() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    rules = [line for line in lines if line and not line.startswith("#")]
    assert rules[0] == "*"
    assert {"!shared/", "!gateway/", "!workers/", "!pipeline/", "!frontend/"} <= set(rules)


def _env(**given: str) -> dict[str, str]:
    """This process's environment without compose's variables, then `given` (REQUIRED unless
    told otherwise)."""
    names = {*REQUIRED, "AGNEWS_ALLOW_OPEN", "AGNEWS_FLOWER_BASIC_AUTH"}
    kept = {name: value for name, value in os.environ.items() if name not in names}
    return {**kept, **REQUIRED, **given}


def _config(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`docker compose config` with no .env file: the test's variables only."""
    empty = Path(os.devnull)
    return run(tool("docker-compose"), "--env-file", str(empty), *args, env=env or _env())


def test_docker_compose_config_passes(tmp_path: Path) -> None:
    compose = tool("docker-compose")
    result = _config("--file", str(COMPOSE), "config", "--quiet")
    assert result.returncode == 0, result.stderr
    gpu = _config("--file", str(COMPOSE), "--file", str(GPU_COMPOSE), "config", "--quiet")
    assert gpu.returncode == 0, gpu.stderr
    docker = shutil.which("docker")
    if docker:
        # The same binary as the docker CLI's compose plugin, as users run it.
        (tmp_path / "config.json").write_text(
            json.dumps({"cliPluginsExtraDirs": [str(Path(compose).parent)]})
        )
        env = {**REQUIRED, "DOCKER_CONFIG": str(tmp_path), "PATH": str(Path(docker).parent)}
        result = run(docker, "compose", "--file", str(COMPOSE), "config", "-q", env=env)
        assert result.returncode == 0, result.stderr


def _compose(*overrides: Path, profiles: tuple[str, ...] = (), **env: str) -> dict[str, Any]:
    files = [arg for path in (COMPOSE, *overrides) for arg in ("--file", str(path))]
    chosen = [arg for profile in profiles for arg in ("--profile", profile)]
    result = _config(*files, *chosen, "config", "--format", "json", env=_env(**env))
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = json.loads(result.stdout)
    return config


def test_compose_runs_the_local_stacks_processes_with_its_settings() -> None:
    services = _compose(profiles=("monitoring",))["services"]
    assert set(services) == {
        "redis",
        "s3",
        "s3-init",
        "listener",
        "gateway",
        *(f"worker-{queue}" for queue in QUEUES),
        "flower",
    }
    for queue in QUEUES:
        worker = services[f"worker-{queue}"]
        assert worker["environment"]["WORKER_QUEUE"] == queue
        # Scalable with --scale: no fixed name, no published port.
        assert "container_name" not in worker
        assert "ports" not in worker
    for name, service in services.items():
        names = {key for key in service.get("environment", {}) if key.startswith("AGNEWS_")}
        assert names <= SETTINGS, (name, names - SETTINGS)
    assert services["listener"]["environment"]["AGNEWS_LISTENER_TOKEN"]
    assert services["gateway"]["environment"]["AGNEWS_REDIS_URL"] == "redis://redis:6379/0"


def test_compose_images_are_pinned_and_redis_keeps_an_append_only_file() -> None:
    services = _compose()["services"]
    for name, service in services.items():
        image = service["image"]
        if "build" in service:
            continue
        assert re.search(r":\d+(\.\d+)+", image), (name, image)
        assert not image.endswith(":latest")
    command = services["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    for name, value in SERVER_CONFIG.items():
        assert command[command.index(f"--{name}") + 1] == value
    assert any(volume["target"] == "/data" for volume in services["redis"]["volumes"])
    assert any(volume["target"] == "/data" for volume in services["s3"]["volumes"])


def test_the_stores_webhook_is_the_local_stacks() -> None:
    config = _compose()
    token = config["services"]["listener"]["environment"]["AGNEWS_LISTENER_TOKEN"]
    port = config["services"]["listener"]["environment"]["AGNEWS_LISTENER_PORT"]
    webhook = Webhook(endpoint=f"http://listener:{port}{WEBHOOK_PATH}", bearer_token=token)
    assert config["configs"]["seaweedfs-notification"]["content"] == webhook.toml()
    [mount] = config["services"]["s3"]["configs"]
    assert mount["target"] == "/etc/seaweedfs/notification.toml"


def test_the_gpu_override_trains_with_the_cuda_image_on_the_gpus() -> None:
    train = _compose(GPU_COMPOSE)["services"]["worker-train"]
    assert train["build"]["target"] == "worker-cuda"
    assert train["environment"]["WORKER_QUEUE"] == "train"
    [device] = train["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"]


def test_circleci_config_matches_circlecis_schema() -> None:
    result = run(tool("check-jsonschema"), "--builtin-schema", "vendor.circle-ci", str(CIRCLECI))
    assert result.returncode == 0, result.stdout + result.stderr


def test_circleci_tests_everything_and_deploys_main_only_without_credentials() -> None:
    text = CIRCLECI.read_text()
    config = yaml.safe_load(text)
    for orb in config["orbs"].values():
        assert re.fullmatch(r"[\w-]+/[\w-]+@\d+\.\d+\.\d+", orb)
    [workflow] = config["workflows"].values()
    jobs = {next(iter(job)) if isinstance(job, dict) else job: job for job in workflow["jobs"]}
    assert jobs["test"] == "test"
    assert any(step.get("run", {}).get("command") == "make test" for step in _steps(config, "test"))
    for name in ("build-images", "deploy"):
        job = jobs[name][name]
        assert job["filters"] == {"branches": {"only": "main"}}
        assert job["context"] == "agnews-aws"
    assert jobs["build-images"]["build-images"]["requires"] == ["test"]
    assert jobs["deploy"]["deploy"]["requires"] == ["build-images"]
    assert "$CIRCLE_SHA1" in text
    for image in ("gateway", "worker", "worker-cuda"):
        assert re.search(rf"build {image} deploy/docker/\w+\.Dockerfile {image}\b", text)
    assert "deploy/rollout.py" in text
    # Credentials and account ids come from the context only.
    assert not re.search(r"AKIA[0-9A-Z]{16}|aws_secret_access_key|\b\d{12}\b", text)


def _steps(config: dict[str, Any], job: str) -> list[dict[str, Any]]:
    return [step for step in config["jobs"][job]["steps"] if isinstance(step, dict)]


def test_compose_stops_before_starting_anything_without_its_secrets() -> None:
    for name in REQUIRED:
        env = _env()
        del env[name]
        result = _config("--file", str(COMPOSE), "config", "--quiet", env=env)
        assert result.returncode != 0, name
        assert name in result.stderr
        assert "deploy/README.md" in result.stderr, result.stderr
    # An empty key list is a choice (an open gateway, which then needs AGNEWS_ALLOW_OPEN=true);
    # empty secrets are not.
    assert (
        _config("--file", str(COMPOSE), "config", "-q", env=_env(AGNEWS_API_KEYS="")).returncode
        == 0
    )
    for secret in ("AGNEWS_S3_SECRET_ACCESS_KEY", "AGNEWS_LISTENER_TOKEN"):
        empty = _config("--file", str(COMPOSE), "config", "-q", env=_env(**{secret: ""}))
        assert empty.returncode != 0, secret


def test_compose_is_closed_by_default_and_ships_no_fixed_secret() -> None:
    config = _compose(profiles=("monitoring",))
    services = config["services"]
    gateway = services["gateway"]["environment"]
    assert gateway.get("AGNEWS_ALLOW_OPEN", "false") == "false"
    assert gateway["AGNEWS_API_KEYS"] == REQUIRED["AGNEWS_API_KEYS"]
    assert (
        _compose(AGNEWS_ALLOW_OPEN="true")["services"]["gateway"]["environment"][
            "AGNEWS_ALLOW_OPEN"
        ]
        == "true"
    )
    # Only the gateway holds the keys; the store and the listener share the test's secrets.
    for name, service in services.items():
        if name != "gateway":
            assert "AGNEWS_API_KEYS" not in service.get("environment", {}), name
    assert (
        services["s3"]["environment"]["AWS_SECRET_ACCESS_KEY"]
        == REQUIRED["AGNEWS_S3_SECRET_ACCESS_KEY"]
    )
    assert (
        services["listener"]["environment"]["AGNEWS_LISTENER_TOKEN"]
        == REQUIRED["AGNEWS_LISTENER_TOKEN"]
    )
    text = COMPOSE.read_text()
    assert "agnews-local-secret" not in text
    assert "agnews-local-webhook-token" not in text


def test_only_the_store_reaches_the_listener() -> None:
    config = _compose(profiles=("monitoring",))
    services = config["services"]
    listener = services["listener"]
    assert set(listener["networks"]) == {"events"}
    assert "ports" not in listener
    assert config["networks"]["events"]["internal"] is True
    on_events = {name for name, service in services.items() if "events" in service["networks"]}
    # The store posts its events there; Redis is there for the listener to reach (it calls no one).
    assert on_events == {"listener", "s3", "redis"}


def test_flower_runs_only_when_asked_and_only_with_a_password() -> None:
    assert "flower" not in _compose()["services"]
    flower = _compose(profiles=("monitoring",), AGNEWS_FLOWER_BASIC_AUTH="me:pw")["services"][
        "flower"
    ]
    assert flower["profiles"] == ["monitoring"]
    assert flower["environment"]["FLOWER_BASIC_AUTH"] == "me:pw"
    assert flower["ports"][0]["host_ip"] == "127.0.0.1"
    # Without one it stops at once, saying why (compose cannot require it of this profile only).
    script = " ".join(flower["entrypoint"]).replace("$$", "$")  # config escapes $ as $$
    assert 'test -n "$FLOWER_BASIC_AUTH"' in script
    assert "AGNEWS_FLOWER_BASIC_AUTH" in script
