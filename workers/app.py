"""The workers' Celery app: `celery -A workers.app worker -Q train` (or predict, evaluate)."""

import os
from typing import Any

from celery.signals import setup_logging

from shared.broker import make_celery
from shared.logs import configure_logging
from shared.settings import get_settings

settings = get_settings()
if settings.training.hf_offline:
    os.environ["HF_HUB_OFFLINE"] = "1"
PROCESS = f"worker-{settings.broker.worker_queue or 'any'}"
configure_logging(settings.run, PROCESS)


@setup_logging.connect  # type: ignore[untyped-decorator]
def _keep_our_logging(**_: Any) -> None:
    """Celery leaves logging as configured here (its records go through the same handler)."""
    configure_logging(settings.run, PROCESS)


app = make_celery(settings, "agnews-workers")
app.conf.imports = ("workers.tasks",)
app.conf.broker_transport = "workers.transport:Transport"
