"""Predict throughput and latency: the model alone, then end to end through the real stack.

    .venv/bin/python bench/throughput.py --model bench/out/model-full

The model folder is what bench/accuracy.py leaves (`--profile full` makes bench/out/model-full).

1. In process, on the archive's test.csv: every serving form's accuracy and texts/s in
   length-sorted batches, scored as registration does (the fastest allowed is the ceiling), and
   single-text latency of the allowed forms (tokenize + forward + answer).
2. The local stack (Redis, SeaweedFS, the gateway, predict workers): the model is registered
   with its forms check and ONNX graphs and promoted; 1, 16 and 64 clients, each sending one
   text per request and the next when answered, through HTTP -> gateway -> Redis -> predict
   worker -> answer; with one worker of 2 torch threads, then with 2 workers of 1 thread (what
   `make up` starts on 2 cores).
   The CPU time each process spent is divided among the requests it served.
3. The ceiling again, since this machine's speed drifts.

`--fleets`, `--clients` and `--rows` narrow a run (e.g. `--fleets 2x1 --rows 1000`); the CPU line
comes first.

The clients speak minimal HTTP/1.1 over asyncio streams so that the load generator, which shares
the machine's cores with the system, costs as little as possible. Prints a table and writes
bench/out/throughput.json.
"""

import argparse
import asyncio
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from bench.machine import cpu_line
from pipeline.ingest import read_archive
from pipeline.predictor import Predictor
from pipeline.report import NullReporter
from pipeline.serving import evaluate_forms, with_form
from shared.contracts.models import MANIFEST
from shared.contracts.results import ServingCheck
from shared.settings import Settings
from stack.processes import Supervisor
from testkit.models import copy_as_new_version
from testkit.stack import live_stack, serve_model

DEFAULT_ARCHIVE = Path(__file__).resolve().parent.parent / "data" / "archive.zip"
OUT = Path(__file__).parent / "out"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def single_latency_ms(predictor: Predictor, texts: list[str], n: int) -> dict[str, float]:
    predictor.predict(texts[:4])
    times = []
    for text in texts[:n]:
        started = time.perf_counter()
        predictor.predict([text])
        times.append((time.perf_counter() - started) * 1000)
    return {"p50_ms": round(percentile(times, 50), 2), "p99_ms": round(percentile(times, 99), 2)}


def in_process(
    model_dir: Path, forms_dir: Path, texts: list[str], rows: list[Any], settings: Settings
) -> dict:
    """Every form scored with every core as registration does (a copy of the model in forms_dir
    gets the ONNX graphs); single-text latency of the allowed forms with every core and with the
    one thread a predict worker uses."""
    shutil.copytree(model_dir, forms_dir)
    fp32 = Predictor.load(forms_dir, settings)
    metrics = evaluate_forms(fp32, rows, forms_dir, settings, NullReporter(), dataset_sha256="")
    check = metrics.serving
    assert check is not None
    single = {}
    for threads in (torch.get_num_threads(), settings.serving.threads):
        torch.set_num_threads(threads)
        for score in check.allowed():
            predictor = with_form(fp32, score.form, forms_dir, threads)
            single[f"{score.form}_{threads}t"] = single_latency_ms(predictor, texts, 200)
    return {"check": check, "single": single}


def cpu_seconds(supervisor: Supervisor) -> dict[str, float]:
    """CPU time (user + system) spent so far by each part of the stack and by this process."""
    ticks = os.sysconf("SC_CLK_TCK")
    spent: dict[str, float] = {"load generator": sum(os.times()[:2])}
    for service in supervisor.services:
        if service.process is None:
            continue
        fields = Path(f"/proc/{service.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        part = "predict workers" if service.name.startswith("worker-predict") else service.name
        spent[part] = spent.get(part, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
    return spent


@dataclass
class Load:
    clients: int
    seconds: float
    requests: int
    errors: int
    texts_per_s: float
    p50_ms: float
    p99_ms: float
    versions: list[str]
    form: str
    cpu_cores: dict[str, float]
    cpu_ms_per_request: dict[str, float]


async def _client(
    url: str, texts: list[str], offset: int, until: float, latencies: list[float], seen: dict
) -> int:
    parsed = urlparse(url)
    reader, writer = await asyncio.open_connection(parsed.hostname, parsed.port)
    errors = 0
    index = offset
    try:
        while time.perf_counter() < until:
            body = json.dumps({"text": texts[index % len(texts)]}).encode()
            index += 1
            head = (
                f"POST /v1/predict HTTP/1.1\r\nHost: {parsed.netloc}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode()
            started = time.perf_counter()
            writer.write(head + body)
            status = int((await reader.readline()).split()[1])
            length = 0
            while (line := await reader.readline()) != b"\r\n":
                name, _, value = line.decode().partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            answer = json.loads(await reader.readexactly(length))
            latencies.append((time.perf_counter() - started) * 1000)
            if status != 200:
                errors += 1
                continue
            seen[answer["model_version"]] = answer.get("form", "?")
    finally:
        writer.close()
    return errors


async def load(
    url: str, texts: list[str], clients: int, seconds: float, supervisor: Supervisor
) -> Load:
    seen: dict[str, str] = {}
    warm: list[float] = []
    await asyncio.gather(
        *(
            _client(url, texts, i * 97, time.perf_counter() + 1.5, warm, seen)
            for i in range(clients)
        )
    )
    latencies: list[float] = []
    cpu_before = cpu_seconds(supervisor)
    started = time.perf_counter()
    errors = await asyncio.gather(
        *(
            _client(url, texts, 5000 + i * 97, started + seconds, latencies, seen)
            for i in range(clients)
        )
    )
    elapsed = time.perf_counter() - started
    cpu = {
        part: spent - cpu_before.get(part, 0.0)
        for part, spent in cpu_seconds(supervisor).items()
        if spent - cpu_before.get(part, 0.0) > 0.005 * elapsed
    }
    return Load(
        clients=clients,
        seconds=round(elapsed, 1),
        requests=len(latencies),
        errors=sum(errors),
        texts_per_s=round((len(latencies) - sum(errors)) / elapsed, 1),
        p50_ms=round(percentile(latencies, 50), 1),
        p99_ms=round(percentile(latencies, 99), 1),
        versions=sorted(seen),
        form=",".join(sorted(set(seen.values()))),
        cpu_cores={part: round(spent / elapsed, 2) for part, spent in cpu.items()},
        cpu_ms_per_request={
            part: round(spent * 1000 / max(1, len(latencies)), 2) for part, spent in cpu.items()
        },
    )


def end_to_end(
    model_dir: Path, texts: list[str], runs: list[int], seconds: float, **settings: Any
) -> list[Load]:
    with (
        tempfile.TemporaryDirectory() as work,
        live_stack(Path(work), queues=("predict",), **settings) as stack,
    ):
        serve_model(stack, model_dir, texts[0])
        return [
            asyncio.run(load(stack.url, texts, clients, seconds, stack.supervisor))
            for clients in runs
        ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=OUT / "model-full")
    parser.add_argument("--data", type=Path, default=DEFAULT_ARCHIVE)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument(
        "--fleets",
        nargs="+",
        default=["1x2", "2x1"],
        help="predict fleets to run end to end, each WORKERSxTHREADS (default: 1x2 2x1)",
    )
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument(
        "--rows", type=int, default=None, help="in process, only the first ROWS test rows"
    )
    args = parser.parse_args()
    print(f"CPU: {cpu_line()}", flush=True)
    if not (args.model / MANIFEST).is_file():
        parser.error(
            f"{args.model} holds no trained model: make one with "
            "`bench/accuracy.py --profile full` (or pass --model, e.g. bench/out/model-quick)"
        )
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    settings = Settings()
    rows = read_archive(args.data, settings).test.rows[: args.rows]
    texts = [row.text for row in rows]
    with tempfile.TemporaryDirectory() as scratch:
        forms_dir = Path(scratch) / "forms"
        local = in_process(args.model, forms_dir, texts, rows, settings)
        check = local["check"]
        best = max(check.allowed(), key=lambda score: score.texts_per_s)
        ceiling = best.texts_per_s
        # The model as a new version whose metrics.json carries the forms check just run.
        model_dir = Path(scratch) / "model"
        copy_as_new_version(forms_dir, model_dir, serving=check)
        runs = {
            f"{workers} worker(s) x {threads} thread(s)": end_to_end(
                model_dir,
                texts,
                args.clients,
                args.seconds,
                model_poll_s=0.5,
                predict_threads=threads,
                predict_workers=workers,
            )
            for workers, threads in (map(int, fleet.split("x")) for fleet in args.fleets)
        }
        # The machine is a shared VM whose speed drifts: the ceiling again, after the load runs.
        served = with_form(Predictor.load(args.model, settings), best.form, forms_dir, 0)
        started = time.perf_counter()
        served.probabilities(texts)
        ceiling_after = round(len(texts) / (time.perf_counter() - started), 1)
    results = {
        "cpu": cpu_line(),
        "model": str(args.model),
        "test_rows": len(rows),
        "check": check.model_dump(mode="json"),
        "single_in_process": local["single"],
        "ceiling_texts_per_s": ceiling,
        "ceiling_after_texts_per_s": ceiling_after,
        "end_to_end": {name: [asdict(run) for run in loads] for name, loads in runs.items()},
    }
    OUT.mkdir(exist_ok=True)
    (OUT / "throughput.json").write_text(json.dumps(results, indent=2))
    report(results)


def report(results: dict[str, Any]) -> None:
    check, single = ServingCheck.model_validate(results["check"]), results["single_in_process"]
    ceiling = results["ceiling_texts_per_s"]
    print(f"CPU: {results['cpu']}")
    print(f"\nmodel {results['model']}, {results['test_rows']} test rows")
    for score in check.forms:
        print(
            f"  {score.form}: accuracy {score.accuracy:.4f} ({score.accuracy_drop_pts:+.2f} pts "
            f"below torch fp32), {score.texts_per_s} texts/s batched ({score.speedup}x), "
            f"allowed: {score.allowed}"
        )
    for name, latency in single.items():
        print(f"  single text {name}: p50 {latency['p50_ms']} ms, p99 {latency['p99_ms']} ms")
    print(
        f"  ceiling (served form, batched, in process): {ceiling} texts/s "
        f"({results['ceiling_after_texts_per_s']} texts/s again after the load runs)"
    )
    print("\nend to end (HTTP -> gateway -> Redis -> predict worker), one text per request")
    for label, runs in results["end_to_end"].items():
        for run in runs:
            print(
                f"  {label:32} {run['clients']:3} clients: {run['texts_per_s']:6.1f} texts/s "
                f"({run['texts_per_s'] / ceiling:.2f} of ceiling), p50 {run['p50_ms']} ms, "
                f"p99 {run['p99_ms']} ms, {run['requests']} requests, {run['errors']} errors, "
                f"served in {run['form']}"
            )
            cores = ", ".join(f"{part} {value}" for part, value in run["cpu_cores"].items())
            print(f"  {'':32}              CPU cores: {cores}")
            per_request = ", ".join(
                f"{part} {value}" for part, value in run["cpu_ms_per_request"].items()
            )
            print(f"  {'':32}              CPU ms per request: {per_request}")


if __name__ == "__main__":
    main()
