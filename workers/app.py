"""The workers' Celery app: `celery -A workers.app worker -Q train` (or predict, evaluate)."""

import os

from shared.broker import make_celery
from shared.logs import configure_logging
from shared.settings import get_settings

settings = get_settings()
if settings.training.hf_offline:
    os.environ["HF_HUB_OFFLINE"] = "1"
configure_logging(settings, "worker")
app = make_celery(settings, "agnews-workers")
app.conf.imports = ("workers.tasks",)
app.conf.broker_transport = "workers.broker:Transport"
