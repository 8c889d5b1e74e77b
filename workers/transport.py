"""kombu's Redis transport, with the acknowledgements of a batch sent in one round trip.

kombu acknowledges a message with a round trip of its own (removing it from the record of
unacknowledged messages), and Celery does it on the consumer's thread, one message at a time: a
predict batch of 64 messages made 64 round trips. `acknowledge` removes a whole batch's messages
from that record in one round trip, after its answers are written; the acknowledgements Celery
then makes for them only update kombu's own bookkeeping.
"""

import logging
from collections.abc import Sequence
from typing import Any

from celery.worker.request import Request
from kombu.transport import redis, virtual

log = logging.getLogger(__name__)


class QoS(redis.QoS):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self._settled: set[str] = set()

    def ack(self, delivery_tag: str) -> None:
        if delivery_tag in self._settled:
            self._settled.discard(delivery_tag)
            virtual.QoS.ack(self, delivery_tag)  # type: ignore[no-untyped-call]
        else:
            super().ack(delivery_tag)  # type: ignore[no-untyped-call]

    def settle(self, delivery_tags: Sequence[str]) -> None:
        """Remove messages from the record of unacknowledged ones, in one round trip."""
        try:
            with self.pipe_or_acquire() as pipe:
                for tag in delivery_tags:
                    self._remove_from_indices(tag, pipe)  # type: ignore[no-untyped-call]
                pipe.execute()
        except self.channel.connection.connection_errors as exc:
            # Each acknowledgement then makes its own round trip, as kombu's do.
            log.warning("could not settle %d messages at once: %s", len(delivery_tags), exc)
            return
        self._settled.update(delivery_tags)


class Channel(redis.Channel):
    QoS = QoS


class Transport(redis.Transport):
    Channel = Channel


def acknowledge(requests: Sequence[Request]) -> None:
    """Acknowledge requests, each channel's settled in one round trip where it allows it."""
    tags: dict[QoS, list[str]] = {}
    for request in requests:
        qos = request.message.channel.qos
        if isinstance(qos, QoS):
            tags.setdefault(qos, []).append(request.message.delivery_tag)
    for qos, settled in tags.items():
        qos.settle(settled)
    for request in requests:
        request.acknowledge()
