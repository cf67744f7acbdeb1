"""Behind a reverse proxy: the URI a partner signed is the public one, and only a
configured proxy (``trusted_proxies``) may say what that is (web.proxies)."""

from __future__ import annotations

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from archive.config import Settings
from archive.identity import load_node_key
from federation.client import FederationClient
from tests.federation.conftest import Pair, PairFactory

PUBLIC = "https://archive.partner.example"


@pytest.fixture
def home_database() -> None:
    """About the partner's entry point: home's catalog is SQLite only."""
    return None


def signed_usage(pair: Pair, signed_for: str) -> httpx.Request:
    """A signed ``GET /usage`` as home signs it for a partner at ``signed_for``."""
    key: Ed25519PrivateKey = load_node_key(pair.home.settings.node_key_path)
    client = FederationClient(signed_for, key)
    try:
        return client.build("GET", "/usage")
    finally:
        client.close()


def through_proxy(pair: Pair, request: httpx.Request, forwarded: dict[str, str]) -> int:
    """Send ``request``'s signed headers to the partner's real socket (as a proxy in front
    of it does, from 127.0.0.1) with ``forwarded`` headers added; the status code."""
    headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
    target = pair.partner.url + request.url.raw_path.decode()
    with httpx.Client() as http:
        return http.get(target, headers={**headers, **forwarded}).status_code


FORWARDED = [
    pytest.param({"X-Forwarded-Proto": "https", "X-Forwarded-Host": "archive.partner.example"}),
    pytest.param({"X-Forwarded-Proto": "https", "Host": "archive.partner.example"}),
]


@pytest.mark.parametrize("forwarded", FORWARDED, ids=["forwarded-host", "host-kept"])
def test_a_request_through_a_trusted_proxy_verifies_against_the_public_uri(
    make_pair: PairFactory, forwarded: dict[str, str]
) -> None:
    pair = make_pair(partner_extra={"trusted_proxies": ["127.0.0.0/8"]})
    assert through_proxy(pair, signed_usage(pair, PUBLIC), forwarded) == 200
    # The forwarded scheme and host are believed: a signature over the socket's own URI
    # no longer matches what the proxy says the request was.
    assert through_proxy(pair, signed_usage(pair, pair.partner.url), forwarded) == 401


def test_forwarding_headers_from_an_untrusted_address_change_nothing(
    make_pair: PairFactory,
) -> None:
    pair = make_pair(partner_extra={"trusted_proxies": ["10.0.0.0/8"]})  # not us
    spoofed = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "archive.partner.example"}
    assert through_proxy(pair, signed_usage(pair, PUBLIC), spoofed) == 401
    assert through_proxy(pair, signed_usage(pair, pair.partner.url), spoofed) == 200


def test_no_proxy_is_trusted_unless_configured(make_pair: PairFactory) -> None:
    pair = make_pair()
    spoofed = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "archive.partner.example"}
    assert through_proxy(pair, signed_usage(pair, PUBLIC), spoofed) == 401
    assert through_proxy(pair, signed_usage(pair, pair.partner.url), spoofed) == 200


def test_a_trusted_proxy_must_be_an_address_or_network() -> None:
    with pytest.raises(ValueError, match="trusted_proxies"):
        Settings(trusted_proxies=["proxy.example"])
