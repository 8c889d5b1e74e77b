import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pipeline.cli import main
from pipeline.registry import verify
from testkit.archives import MINI_ARCHIVE, csv_bytes, mini_records
from testkit.models import tiny_model

AGNEWS = Path(sys.executable).parent / "agnews"


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("tiny"))


def environment(cwd: Path) -> dict[str, str]:
    return {
        "AGNEWS_DATA_DIR": str(cwd / "data"),
        "AGNEWS_S3_ENDPOINT_URL": "http://127.0.0.1:9",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def agnews(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The installed command, in a process of its own."""
    return subprocess.run(
        [str(AGNEWS), *map(str, args)],
        cwd=cwd,
        env={**os.environ, **environment(cwd)},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def agnews_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[..., subprocess.CompletedProcess[str]]:
    """The same command run in this process, where torch is already loaded: the entry point is
    tested once per command above, each further case here without a second import of the ML
    stack (about 13 s on the AVX2 EPYC)."""
    monkeypatch.chdir(tmp_path)
    for name, value in environment(tmp_path).items():
        monkeypatch.setenv(name, value)

    def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
        capsys.readouterr()
        code = main([str(arg) for arg in args])
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(["agnews", *map(str, args)], code, out, err)

    return run


def last_json(output: str) -> Any:
    return json.loads(output.strip().splitlines()[-1])


def test_train_writes_a_loadable_model_folder(tmp_path: Path) -> None:
    out = tmp_path / "model"
    done = agnews(
        "train",
        "--data",
        MINI_ARCHIVE,
        "--profile",
        "quick",
        "--out",
        out,
        "--max-steps",
        "2",
        "--json",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    summary = last_json(done.stdout)
    info = verify(out)
    assert summary["version"] == info.version
    assert summary["accuracy"] == info.metrics.accuracy
    assert info.params.steps == 2
    assert info.metrics.n == 80
    assert "train" in done.stderr
    assert info.params.plan is not None
    assert summary["plan"] == info.params.plan.model_dump(mode="json")
    assert info.params.plan.describe() in done.stdout
    assert set(summary["stage_seconds"]) >= {"ingest", "train", "evaluate"}
    assert "wall time: ingest " in done.stdout
    assert not (tmp_path / "model.checkpoints").exists()


def test_evaluate_prints_metrics_json_last(
    model_dir: Path, tmp_path: Path, agnews_here: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    expected = verify(model_dir).metrics
    done = agnews("evaluate", "--model", model_dir, "--data", MINI_ARCHIVE, "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    metrics = last_json(done.stdout)
    assert metrics["accuracy"] == expected.accuracy, (metrics, done.stderr)
    assert metrics["macro_f1"] == expected.macro_f1, (metrics, done.stderr)
    # The blend is what is scored, with each member beside it.
    members = metrics["members"]
    assert members["blend_accuracy"] == metrics["accuracy"]
    assert {"transformer_accuracy", "linear_accuracy", "weight"} <= set(members)
    assert members["mixing"] == "geometric"
    assert "macro-F1" in done.stdout

    test_csv = tmp_path / "test.csv"
    with zipfile.ZipFile(MINI_ARCHIVE) as archive:
        test_csv.write_bytes(archive.read("test.csv"))
    done = agnews_here("evaluate", "--model", model_dir, "--data", test_csv, "--json")
    assert done.returncode == 0, done.stderr
    assert last_json(done.stdout)["accuracy"] == expected.accuracy, done.stdout


def test_predict_classifies_texts(
    model_dir: Path, tmp_path: Path, agnews_here: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    texts = ["Stocks rally as the Fed holds rates", "Wisconsin routs Penn 77-44"]
    done = agnews("predict", "--model", model_dir, "--json", *texts, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    answer = last_json(done.stdout)
    assert answer["model_version"] == verify(model_dir).version
    assert len(answer["predictions"]) == 2
    for prediction in answer["predictions"]:
        assert sum(prediction["scores"].values()) == pytest.approx(1.0, abs=1e-5)

    done = agnews_here("predict", "--model", model_dir, texts[0])
    assert done.returncode == 0, done.stderr
    assert texts[0] in done.stdout


def test_bad_input_is_a_message_not_a_traceback(model_dir: Path, tmp_path: Path) -> None:
    records = mini_records("test.csv")
    bad_csv = tmp_path / "test.csv"
    bad_csv.write_bytes(csv_bytes([["9", "A title", "A description"], *records]))
    done = agnews("evaluate", "--model", model_dir, "--data", bad_csv, "--json", cwd=tmp_path)
    assert done.returncode != 0
    assert 'test.csv line 2: class index "9" is not one of 1..4' in done.stderr
    assert "Traceback" not in done.stderr

    not_zip = tmp_path / "archive.zip"
    not_zip.write_text("hello")
    done = agnews(
        "train", "--data", not_zip, "--profile", "quick", "--out", tmp_path / "m", cwd=tmp_path
    )
    assert done.returncode != 0
    assert "is not a zip archive" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "m").exists()


# Runs the CLI in process, then prints whether the ML stack was ever imported.
CHECK_BEFORE_ML = """
import sys
from pipeline.cli import main
code = main(sys.argv[1:])
print(code, "torch" in sys.modules, "transformers" in sys.modules)
"""


def test_bad_data_is_refused_before_the_ml_stack_is_loaded(tmp_path: Path) -> None:
    not_zip = tmp_path / "archive.zip"
    not_zip.write_text("hello")
    bad_csv = tmp_path / "test.csv"
    bad_csv.write_bytes(csv_bytes([["9", "A title", "A description"]]))
    for args in [
        ["train", "--data", not_zip, "--profile", "quick", "--out", tmp_path / "m"],
        ["evaluate", "--model", tmp_path / "no-model", "--data", bad_csv],
    ]:
        done = subprocess.run(
            [sys.executable, "-c", CHECK_BEFORE_ML, *map(str, args)],
            cwd=tmp_path,
            env={**os.environ, **environment(tmp_path)},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.stdout.split()[-3:] == ["2", "False", "False"], (done.stdout, done.stderr)
        assert "agnews" in done.stderr
