import logging
import sys

from shared.settings import Settings


def configure_logging(settings: Settings, name: str) -> logging.Logger:
    logging.basicConfig(
        level=settings.run.log_level.upper(),
        stream=sys.stderr,
        format=f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s",
    )
    return logging.getLogger(name)
