"""Adaptation's masked-LM steps on this machine: steps/s and the process's memory as they run.

    .venv/bin/python -m bench.adapt_speed [--steps 300] [--scored-rows 1]

Runs the real Adapter (the `full` profile's settings, bf16 where the CPU has it) over the
archive's training texts and prints, every 50 steps, the resident memory and the steps/s since
the last line. --scored-rows 1 scores each batch's masked positions in a shape of their own, as
before they were padded to a multiple of 64: on the AMX Xeon its memory grew step after step.
"""

import argparse
import json
import time
from pathlib import Path

import pipeline.adapt
from bench.machine import cpu_line
from pipeline.adapt import Adapter
from pipeline.ingest import read_archive
from pipeline.modeling import (
    bf16_supported,
    configure_torch,
    encode,
    load_tokenizer,
    padding_of,
    resolve_base_model,
)
from shared.settings import Settings, config_for

DEFAULT_ARCHIVE = Path(__file__).resolve().parent.parent / "data" / "archive.zip"
EVERY = 50


def resident_mib() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * 4096 / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_ARCHIVE)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--scored-rows", type=int, default=pipeline.adapt.SCORED_ROWS)
    args = parser.parse_args()
    pipeline.adapt.SCORED_ROWS = args.scored_rows
    print(cpu_line(), flush=True)
    settings = Settings()
    config = config_for(settings.training, "full")
    device = configure_torch(settings)
    bf16 = config.bf16 and bf16_supported(device)
    base = resolve_base_model(config.base_model)
    tokenizer = load_tokenizer(base)
    rows = read_archive(args.data, settings).train.rows
    ids = encode(tokenizer, [row.text for row in rows], config.max_length)
    adapter = Adapter(base, tokenizer, config, padding_of(tokenizer), device, bf16, args.steps)
    batches = adapter.batches([len(row) for row in ids], 0)
    started = time.monotonic()
    for step in range(1, args.steps + 1):
        adapter.step([ids[i] for i in batches[(step - 1) % len(batches)]])
        if step % EVERY == 0:
            now = time.monotonic()
            line = {
                "step": step,
                "resident_mib": round(resident_mib()),
                "steps_per_s": round(EVERY / (now - started), 2),
            }
            print(json.dumps(line), flush=True)
            started = now
    print(json.dumps({"cpu": cpu_line(), "bf16": bf16, "scored_rows": args.scored_rows}))


if __name__ == "__main__":
    main()
