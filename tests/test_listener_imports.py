"""The S3-event listener is a program of its own: loading it loads no torch and no `pipeline/`."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LISTENER = (
    "workers.listener",
    "workers.listener.events",
    "workers.listener.trigger",
    "workers.listener.webhook",
    "workers.listener.sqs",
    "workers.listener.main",
)
# What only the Celery workers may load.
FORBIDDEN = ("torch", "transformers", "pipeline", "workers.app", "workers.tasks")

# Imports the modules named on its command line, builds the listener's objects, prints sys.modules.
_PROBE = """
import importlib, json, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
from shared.settings import Settings
from workers.listener.sqs import SqsListener
from workers.listener.trigger import PipelineTrigger
from workers.listener.webhook import webhook_app
settings = Settings(listener_token="token", sqs_queue_url="http://127.0.0.1:9/queue")
trigger = PipelineTrigger.from_settings(settings)
webhook_app(settings, trigger)
SqsListener(settings, trigger)
print(json.dumps(sorted(sys.modules)))
"""


def loaded_in_a_fresh_process(*modules: str) -> set[str]:
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, *modules],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return set(json.loads(result.stdout.splitlines()[-1]))


def forbidden(modules: set[str]) -> list[str]:
    return sorted(
        name
        for name in modules
        if any(name == prefix or name.startswith(f"{prefix}.") for prefix in FORBIDDEN)
    )


def test_the_listener_package_loads_neither_torch_nor_pipeline_nor_the_workers_tasks() -> None:
    modules = loaded_in_a_fresh_process(*LISTENER)
    assert set(LISTENER) <= modules
    assert forbidden(modules) == []


def test_the_probe_sees_what_the_workers_tasks_load() -> None:
    modules = loaded_in_a_fresh_process("workers.tasks")
    assert {"torch", "pipeline", "workers.tasks"} <= set(forbidden(modules))
