"""TesseraAuth against a real broker process and a protected resource over
real TLS: discovery from a 401, mTLS tokens, caching, step-up, approvals,
revocation, DPoP, and no token in any log."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import anyio
import httpx2
import pytest

from conftest import World
from tessera_client import (
    ApprovalDenied,
    ApprovalTimeout,
    DiscoveryError,
    TesseraAuth,
    TokenRequestError,
    mtls_context,
)


def agent_auth(w: World, **kw: Any) -> TesseraAuth:
    cert, key = w.agent
    kw.setdefault("scope", "tickets:read")
    return TesseraAuth(cert=cert, key=key, ca=w.broker.ca, **kw)


def agent_client(w: World, auth: TesseraAuth) -> httpx2.Client:
    cert, key = w.agent
    # Tokens issued over the certificate are bound to it: the resource sees it too.
    return httpx2.Client(auth=auth, verify=mtls_context(cert, key, w.broker.ca), timeout=30)


def seen_since(w: World, n: int) -> list[tuple[str, str, int, bool]]:
    return [(s.method, s.path, s.status, s.token is not None) for s in w.rs.seen[n:]]


def approve_when_pending(w: World, decide: str = "approve") -> threading.Thread:
    """Approves (or denies) the first pending approval from another thread, as an operator would."""

    def run() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            pending = w.broker.pending_approvals()
            if pending:
                w.broker.cli(decide, pending[0]["id"], "--reason", "pytest")
                return
            time.sleep(0.2)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_a_401_leads_to_the_broker_and_the_token_is_cached(world: World) -> None:
    auth = agent_auth(world)
    n = len(world.rs.seen)
    with agent_client(world, auth) as c:
        r = c.get(world.rs.url + "/tickets")
        assert r.status_code == 200, r.text
        assert r.json()["sub"] == "spiffe://example.org/agent/demo"
        assert r.json()["scope"] == "tickets:read"
        # First contact: 401 without a token, then the token.
        assert seen_since(world, n) == [("GET", "/tickets", 401, False), ("GET", "/tickets", 200, True)]
        token = world.rs.seen[-1]
        assert token.claims is not None and token.claims["aud"] == world.rs.url
        assert "x5t#S256" in token.claims["cnf"], "issued over mTLS: bound to the agent's certificate"

        # Second request: the cached token, no 401, no new token.
        r = c.get(world.rs.url + "/tickets")
        assert r.status_code == 200
        assert world.rs.seen[-1].token == token.token
        assert auth.tokens_fetched == 1
        cached = auth.cached_token(world.rs.url + "/tickets")
        assert cached is not None and cached.scopes == frozenset({"tickets:read"})


def test_insufficient_scope_is_retried_once_with_the_wider_scope(world: World) -> None:
    auth = agent_auth(world)
    with agent_client(world, auth) as c:
        assert c.get(world.rs.url + "/tickets").status_code == 200
        n = len(world.rs.seen)
        r = c.post(world.rs.url + "/tickets", json={"title": "printer on fire"})
        assert r.status_code == 200, r.text
        assert sorted(r.json()["scope"].split()) == ["tickets:read", "tickets:write"]
        assert seen_since(world, n) == [("POST", "/tickets", 403, True), ("POST", "/tickets", 200, True)]
        # The wider set is now what this resource gets: no more 403s.
        assert c.post(world.rs.url + "/tickets", json={}).status_code == 200
        assert auth.tokens_fetched == 2


def test_a_scope_the_policy_does_not_allow_is_an_error_not_a_loop(world: World) -> None:
    auth = agent_auth(world, scope="tickets:read tickets:admin")
    with agent_client(world, auth) as c, pytest.raises(TokenRequestError) as e:
        c.get(world.rs.url + "/tickets")
    assert e.value.error == "invalid_scope" and e.value.status == 400


def test_an_approval_scope_waits_for_the_human_and_carries_the_call(world: World) -> None:
    pending: list[str] = []
    details = [{"type": "ticket_delete", "locations": [world.rs.url], "ticket": "7"}]
    auth = agent_auth(world, on_pending=pending.append, authorization_details=lambda req, scopes: details if "tickets:delete" in scopes else None)
    with agent_client(world, auth) as c:
        assert c.get(world.rs.url + "/tickets").status_code == 200
        approver = approve_when_pending(world)
        r = c.delete(world.rs.url + "/tickets/7")
        approver.join()
        assert r.status_code == 200, r.text
        assert len(pending) == 1, "on_pending is called once per wait"
        assert r.json()["authorization_details"] == details
        assert "tickets:delete" in r.json()["scope"].split()
        # A token for one approved call is not cached for the next one.
        assert "tickets:delete" not in " ".join(" ".join(t.scopes) for t in auth._cache.values())
        assert c.get(world.rs.url + "/tickets").json()["scope"] == "tickets:read"


def test_a_denied_approval_is_a_typed_error(world: World) -> None:
    auth = agent_auth(world, scope="tickets:read tickets:delete", task="deny-me")
    denier = approve_when_pending(world, "deny")
    with agent_client(world, auth) as c, pytest.raises(ApprovalDenied) as e:
        c.delete(world.rs.url + "/tickets/8")
    denier.join()
    assert e.value.error == "access_denied"


def test_waiting_longer_than_max_wait_gives_up(world: World) -> None:
    auth = agent_auth(world, scope="tickets:read tickets:delete", task="nobody-decides", max_wait=2.5)
    with agent_client(world, auth) as c, pytest.raises(ApprovalTimeout):
        c.delete(world.rs.url + "/tickets/9")
    # Leave nothing pending for the other tests.
    for a in world.broker.pending_approvals():
        world.broker.cli("deny", a["id"], "--reason", "cleanup")


def test_a_revoked_token_is_dropped_and_never_sent_again(world: World) -> None:
    auth = agent_auth(world, task="revoke-me")
    with agent_client(world, auth) as c:
        assert c.get(world.rs.url + "/tickets").status_code == 200
        old = world.rs.seen[-1]
        assert old.claims is not None
        world.broker.cli("revoke", "--jti", old.claims["jti"], "--reason", "pytest")
        n = len(world.rs.seen)
        r = c.get(world.rs.url + "/tickets")
        assert r.status_code == 200
        assert seen_since(world, n) == [("GET", "/tickets", 401, True), ("GET", "/tickets", 200, True)]
        assert world.rs.seen[n].token == old.token and world.rs.seen[n + 1].token != old.token
        assert c.get(world.rs.url + "/tickets").status_code == 200
        assert all(s.token != old.token for s in world.rs.seen[n + 1 :])


def test_dpop_token_exchange_without_a_certificate(world: World) -> None:
    """A CI job: its OIDC token is the subject, a DPoP key binds the result;
    every request to the resource carries a fresh proof (async client)."""
    subject_calls: list[int] = []

    def subject() -> str:
        subject_calls.append(1)
        return world.oidc.sign("job:42")

    auth = TesseraAuth(subject_token=subject, dpop=True, ca=world.broker.ca, scope="tickets:read")
    assert auth.dpop_key is not None

    async def main() -> None:
        async with httpx2.AsyncClient(auth=auth, verify=mtls_context(ca=world.broker.ca), timeout=30) as c:
            for _ in range(2):
                r = await c.get(world.rs.url + "/tickets")
                assert r.status_code == 200, r.text

    anyio.run(main)
    last = world.rs.seen[-1]
    assert last.claims is not None and auth.dpop_key is not None
    assert last.claims["cnf"] == {"jkt": auth.dpop_key.thumbprint}
    assert last.claims["sub"] == "job:42"
    assert len(subject_calls) == 1 and auth.tokens_fetched == 1


def test_an_authorization_server_other_than_the_pinned_one_is_refused(world: World) -> None:
    cert, key = world.agent
    auth = TesseraAuth(cert=cert, key=key, ca=world.broker.ca, issuer="https://tessera.elsewhere.example", scope="tickets:read")
    with agent_client(world, auth) as c, pytest.raises(DiscoveryError):
        c.get(world.rs.url + "/tickets")
    assert auth.tokens_fetched == 0


def test_metadata_for_another_resource_is_refused(world: World) -> None:
    """A server that points at someone else's metadata gets no token for that someone."""

    def evil(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(401, headers={"WWW-Authenticate": f'Bearer resource_metadata="{world.rs.metadata_url}"'})

    auth = agent_auth(world)
    with httpx2.Client(auth=auth, transport=httpx2.MockTransport(evil)) as c, pytest.raises(DiscoveryError) as e:
        c.get("https://evil.example/tickets")
    assert "does not describe" in str(e.value)
    assert auth.tokens_fetched == 0


def test_no_token_reaches_a_log_an_error_or_a_repr(world: World, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # every logger: ours, httpx2's, httpcore2's
    n = len(world.rs.seen)
    auth = agent_auth(world, task="quiet")
    errors: list[str] = []
    with agent_client(world, auth) as c:
        assert c.get(world.rs.url + "/tickets").status_code == 200
        assert c.post(world.rs.url + "/tickets", json={}).status_code == 200
        first = world.rs.seen[n + 1]
        assert first.claims is not None
        world.broker.cli("revoke", "--subject", "spiffe://example.org/agent/demo", "--block-for", "3s", "--reason", "pytest")
        try:
            c.get(world.rs.url + "/tickets")
        except TokenRequestError as e:  # the kill switch refuses the new token
            errors.append(str(e))
            errors.append(repr(e))
        errors.append(repr(auth))
        errors.extend(repr(t) for t in auth._cache.values())
    assert errors and "invalid_request" in errors[0]
    tokens = {s.token for s in world.rs.seen[n:] if s.token}
    assert len(tokens) >= 2
    text = caplog.text + "\n".join(errors)
    assert "sha256:" in caplog.text and f"jti={first.claims['jti']}" in caplog.text, "logs name tokens by jti and hash"
    for t in tokens:
        assert t not in text
        assert t.split(".")[2] not in text, "not even the signature"
    time.sleep(3.5)  # the block ends before the next test
