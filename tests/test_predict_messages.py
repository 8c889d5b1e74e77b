"""The predict queue's cheaper paths: the message the gateway builds itself, and a batch's
acknowledgements settled in one round trip."""

import base64
import json
from typing import Any

import redis
from kombu import Connection

from shared.broker import make_celery, predict_message
from shared.contracts.stages import PREDICT
from shared.settings import Settings
from workers.transport import Transport


def _comparable(raw: str) -> dict[str, Any]:
    """A stored message without what differs between any two sends (ids, sender, queue)."""
    message = json.loads(raw)
    message["body"] = json.loads(base64.b64decode(message["body"]))
    for name in ("id", "root_id", "origin"):
        message["headers"].pop(name)
    for name in ("correlation_id", "delivery_tag"):
        message["properties"].pop(name)
    message["properties"]["delivery_info"].pop("routing_key")
    return message


def test_the_gateways_predict_message_is_the_one_celery_sends(
    settings: Settings, redis_client: "redis.Redis[str]"
) -> None:
    app = make_celery(settings)
    queue = f"{settings.redis.key_prefix}:predict"
    app.send_task(PREDICT, args=["job-1"], queue=queue)
    sent = redis_client.rpop(queue)
    assert isinstance(sent, str)
    built = predict_message(app, ["job-1"])
    assert _comparable(built) == _comparable(sent)
    assert json.loads(built)["properties"]["delivery_info"]["routing_key"] == "predict"


def test_settled_messages_leave_the_unacknowledged_record_at_once_and_ack_quietly(
    settings: Settings, redis_client: "redis.Redis[str]"
) -> None:
    prefix = settings.redis.key_prefix
    options = {
        "unacked_key": f"{prefix}:unacked",
        "unacked_index_key": f"{prefix}:unacked_index",
        "unacked_mutex_key": f"{prefix}:unacked_mutex",
    }
    with Connection(settings.redis.url, transport=Transport, transport_options=options) as conn:
        queue = conn.SimpleQueue(f"{prefix}:q")
        for n in range(4):
            queue.put({"n": n})
        messages = [queue.get(timeout=5) for _ in range(4)]
        assert redis_client.hlen(options["unacked_key"]) == 4
        qos = messages[0].channel.qos
        qos.settle([message.delivery_tag for message in messages[:3]])
        assert redis_client.hlen(options["unacked_key"]) == 1
        assert redis_client.zcard(options["unacked_index_key"]) == 1
        for message in messages:
            message.ack()
        assert redis_client.hlen(options["unacked_key"]) == 0
        assert redis_client.zcard(options["unacked_index_key"]) == 0
        assert [message.payload["n"] for message in messages] == [0, 1, 2, 3]
        queue.close()
