"""The gateway behind a load balancer that ends TLS: forwarded headers count only from
AGNEWS_FORWARDED_ALLOW_IPS; over https the cookie is Secure and HSTS is sent; /metrics and /readyz
answer internal addresses (AGNEWS_INTERNAL_CIDRS) only."""

import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from gateway.app import create_app
from shared.contracts.keys import ApiKey, key_digest
from shared.settings import Settings
from tests.served import served_app
from tests.test_gateway_security import cookie_attributes, error_of

KEY = "transport-key"
KEYS = [ApiKey(name="ops", sha256=key_digest(KEY), scopes=("admin",))]
HTTPS = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"}
HSTS = "strict-transport-security"


@pytest.fixture
def behind(settings: Settings) -> Settings:
    """Keys on; the proxy is this host (the tests' connections come from 127.0.0.1); internal
    addresses are 10.0.0.0/8 only."""
    return settings.replace(
        api_keys=KEYS, forwarded_allow_ips=["127.0.0.0/8"], internal_cidrs=["10.0.0.0/8"]
    )


def _serve(settings: Settings) -> Iterator[httpx.Client]:
    with served_app(create_app(settings), settings) as url, httpx.Client(base_url=url) as http:
        yield http


@pytest.fixture
def trusted(behind: Settings) -> Iterator[httpx.Client]:
    yield from _serve(behind)


@pytest.fixture
def untrusted(behind: Settings) -> Iterator[httpx.Client]:
    """The proxy is elsewhere (10.9.0.0/16): this host's forwarded headers are not believed."""
    yield from _serve(behind.replace(forwarded_allow_ips=["10.9.0.0/16"]))


def test_through_a_trusted_proxy_over_https_the_cookie_is_secure_and_hsts_is_sent(
    trusted: httpx.Client,
) -> None:
    signed = trusted.post("/v1/session", json={"key": KEY}, headers=HTTPS)
    assert signed.status_code == 200
    assert cookie_attributes(signed)["secure"]
    assert signed.headers[HSTS] == "max-age=31536000"
    assert trusted.get("/healthz", headers=HTTPS).headers[HSTS] == "max-age=31536000"
    refused = trusted.get("/v1/jobs", headers=HTTPS)
    assert error_of(refused, 401)
    assert HSTS in refused.headers  # errors too
    # The proxy's plain-http requests: no Secure cookie, no HSTS.
    plain = trusted.post("/v1/session", json={"key": KEY}, headers={"X-Forwarded-Proto": "http"})
    assert not cookie_attributes(plain)["secure"]
    assert HSTS not in plain.headers


def test_an_untrusted_address_does_not_make_a_request_https(untrusted: httpx.Client) -> None:
    signed = untrusted.post("/v1/session", json={"key": KEY}, headers=HTTPS)
    assert signed.status_code == 200
    assert not cookie_attributes(signed)["secure"]
    assert HSTS not in signed.headers
    assert HSTS not in untrusted.get("/healthz", headers=HTTPS).headers


def test_hsts_can_be_turned_off(behind: Settings) -> None:
    for http in _serve(behind.replace(hsts_max_age_s=0)):
        assert HSTS not in http.get("/healthz", headers=HTTPS).headers


@pytest.mark.parametrize("path", ["/metrics", "/readyz", "/metrics/", "/readyz?x=1"])
def test_metrics_and_readiness_answer_internal_addresses_only(
    trusted: httpx.Client, path: str
) -> None:
    # The load balancer appends the address it saw: the client's own claims come before it.
    for forwarded in ("203.0.113.9", "10.1.2.3, 203.0.113.9"):
        response = trusted.get(path, headers={"X-Forwarded-For": forwarded})
        error = error_of(response, 403)
        assert "AGNEWS_INTERNAL_CIDRS" in error["message"]
        assert error["details"] == {"client": "203.0.113.9"}
    inside = trusted.get(path.rstrip("/"), headers={"X-Forwarded-For": "10.1.2.3"})
    assert inside.status_code in (200, 503), inside.text  # readiness may say not ready
    assert trusted.get("/healthz", headers={"X-Forwarded-For": "203.0.113.9"}).status_code == 200


def test_an_untrusted_address_cannot_claim_to_be_internal(untrusted: httpx.Client) -> None:
    # From 127.0.0.1, which is not internal here, and not a proxy whose X-Forwarded-For counts.
    response = untrusted.get("/metrics", headers={"X-Forwarded-For": "10.1.2.3"})
    assert error_of(response, 403)["details"] == {"client": "127.0.0.1"}


def test_by_default_loopback_and_private_networks_are_internal(settings: Settings) -> None:
    for http in _serve(settings):
        assert http.get("/metrics").status_code == 200
        assert error_of(http.get("/metrics", headers={"X-Forwarded-For": "203.0.113.9"}), 403)
    for given in ("10.0.0.0/8", "::1", "127.0.0.1/32"):
        assert Settings.model_validate({"internal_cidrs": given}).gateway.internal_cidrs == [given]
    for wrong in ("nowhere", "10.0.0.0/33", "*"):
        with pytest.raises(ValueError, match="AGNEWS_FORWARDED_ALLOW_IPS"):
            Settings.model_validate({"forwarded_allow_ips": wrong})
        with pytest.raises(ValueError, match="AGNEWS_INTERNAL_CIDRS"):
            Settings.model_validate({"internal_cidrs": wrong})


def test_an_idle_connection_is_kept_past_uvicorns_default_of_five_seconds(
    behind: Settings,
) -> None:
    with served_app(create_app(behind), behind) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
            request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            connection.sendall(request)
            assert connection.recv(4096).startswith(b"HTTP/1.1 200")
            time.sleep(6)
            connection.sendall(request)
            assert connection.recv(4096).startswith(b"HTTP/1.1 200")
