"""End to end with a real MCP client that no one here wrote: the official
MCP Python SDK (`mcp` 2.x, streamable HTTP) with `TesseraAuth`, against the
`tessera` broker on the shipped `config/mcp.toml` (ports changed), the Rust
MCP server example (`examples/mcp_server.rs`, rmcp) and the downstream API
behind it (`examples/downstream_api.rs`), each its own process.

The agent's base identity is a platform OIDC token (a Python issuer here),
exchanged over TLS without a client certificate: its tokens are unbound, so
the MCP server can exchange them for the downstream API (see
`config/mcp.toml`). Each test uses its own agent subject, so one test's
revocation does not touch another's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from _harness import MCP_SERVER_ID, REPO, McpWorld, MissingBinary, start_mcp_world
from tessera_client import ApprovalDenied, TesseraAuth, TokenRequestError, mcp_http_client, token_fingerprint

@pytest.fixture(scope="module")
def mcp_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[McpWorld]:
    try:
        with start_mcp_world(tmp_path_factory.mktemp("mcp")) as w:
            yield w
    except MissingBinary as e:
        pytest.fail(str(e))


@dataclass
class Wire:
    """What went over the wire to the MCP server: (method, status, token fingerprint)."""

    seen: list[tuple[str, int, str | None]] = field(default_factory=list)

    async def hook(self, response: httpx2.Response) -> None:
        auth = response.request.headers.get("authorization")
        fp = token_fingerprint(auth.split(" ", 1)[1]) if auth else None
        self.seen.append((response.request.method, response.status_code, fp))

    def statuses(self, since: int = 0) -> list[int]:
        return [s for _, s, _ in self.seen[since:]]


def session(w: McpWorld, auth: TesseraAuth, wire: Wire) -> Client:
    http = mcp_http_client(auth, event_hooks={"response": [wire.hook]})
    return Client(streamable_http_client(w.mcp_url, http_client=http), cache=None)


def text_of(result: Any) -> str:
    assert not result.is_error, result
    return " ".join(getattr(c, "text", "") for c in result.content)


def first(group: BaseExceptionGroup[BaseException], kind: type[BaseException]) -> BaseException | None:
    for e in group.exceptions:
        if isinstance(e, kind):
            return e
        if isinstance(e, BaseExceptionGroup):
            found = first(e, kind)
            if found is not None:
                return found
    return None


def decide_when_pending(w: McpWorld, decision: str, seen: list[dict[str, Any]]) -> threading.Thread:
    """An operator at the CLI: waits for the pending approval, records it, decides it."""

    def run() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            pending = w.broker.pending_approvals()
            if pending:
                seen.append(pending[0])
                w.broker.cli(decision, pending[0]["id"], "--reason", "pytest e2e")
                return
            time.sleep(0.2)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_tools_are_listed_and_a_read_call_succeeds(mcp_world: McpWorld) -> None:
    auth, wire = mcp_world.auth("agent:reader"), Wire()

    async def main() -> None:
        async with session(mcp_world, auth, wire) as c:
            tools = {t.name for t in (await c.list_tools()).tools}
            assert {"read_tickets", "write_ticket", "delete_ticket", "read_archive"} <= tools
            assert text_of(await c.call_tool("read_tickets", {}))

    anyio.run(main)
    # The first request found the broker through the 401's resource_metadata.
    assert wire.seen[0][1:] == (401, None)
    assert all(s < 400 for s in wire.statuses(1)), wire.seen
    assert auth.tokens_fetched == 1
    tokens = {fp for _, _, fp in wire.seen[1:]}
    assert len(tokens) == 1, "one cached token for every request"


def test_a_call_without_its_scope_gets_the_403_and_succeeds_after_the_auth_asks_again(mcp_world: McpWorld) -> None:
    auth, wire = mcp_world.auth("agent:writer"), Wire()

    async def main() -> None:
        async with session(mcp_world, auth, wire) as c:
            await c.call_tool("read_tickets", {})
            n = len(wire.seen)
            text_of(await c.call_tool("write_ticket", {"title": "printer on fire"}))
            assert wire.statuses(n)[:2] == [403, 200], wire.seen[n:]
            # The wider token is cached: the next write goes straight through.
            n = len(wire.seen)
            text_of(await c.call_tool("write_ticket", {"title": "and the fax"}))
            assert 403 not in wire.statuses(n)

    anyio.run(main)
    assert auth.tokens_fetched == 2
    token = auth.cached_token(mcp_world.mcp_url)
    assert token is not None and token.scopes == frozenset({"tickets:read", "tickets:write"})


def test_the_destructive_tool_waits_for_an_approval_decided_through_the_admin_api(mcp_world: McpWorld) -> None:
    pending: list[str] = []
    auth, wire = mcp_world.auth("agent:deleter", on_pending=pending.append), Wire()
    decided: list[dict[str, Any]] = []

    async def main() -> None:
        async with session(mcp_world, auth, wire) as c:
            await c.call_tool("read_tickets", {})
            operator = decide_when_pending(mcp_world, "approve", decided)
            n = len(wire.seen)
            text_of(await c.call_tool("delete_ticket", {"id": 7}))
            operator.join()
            assert wire.statuses(n)[:2] == [403, 200]

    anyio.run(main)
    [approval] = decided
    assert pending == [approval["id"]]
    # The approver saw exactly the call, and the token carried it.
    assert approval["authorization_details"] == [{"type": "mcp_tool_call", "tool": "delete_ticket", "arguments": {"id": 7}}]
    assert approval["subject"] == "agent:deleter"
    assert "tickets:delete" in approval["scopes"]

    # Denied: the call fails with the typed error, and nothing is deleted.
    auth2 = mcp_world.auth("agent:deleter2")

    async def denied() -> None:
        async with session(mcp_world, auth2, Wire()) as c:
            await c.call_tool("delete_ticket", {"id": 8})

    operator = decide_when_pending(mcp_world, "deny", [])
    with pytest.raises(BaseExceptionGroup) as eg:
        anyio.run(denied)
    operator.join()
    assert isinstance(first(eg.value, ApprovalDenied), ApprovalDenied)


def test_the_downstream_api_gets_a_token_with_act_and_never_the_agents_token(mcp_world: McpWorld) -> None:
    auth, wire = mcp_world.auth("agent:archivist"), Wire()
    out: dict[str, Any] = {}

    async def main() -> None:
        async with session(mcp_world, auth, wire) as c:
            out.update(json.loads(text_of(await c.call_tool("read_archive", {}))))

    anyio.run(main)
    downstream = out["downstream"]
    assert downstream["caller"] == "agent:archivist"
    assert MCP_SERVER_ID in json.dumps(downstream["actors"]), downstream
    agent_token = auth.cached_token(mcp_world.mcp_url)
    assert agent_token is not None and agent_token.jti
    log = mcp_world.downstream.log_text()
    served = [line for line in log.splitlines() if line.startswith("200 GET /archive") and "agent:archivist" in line]
    assert served, log
    assert all(agent_token.jti not in line for line in served), "the downstream API saw another token (an exchanged one)"
    # And the agent's own token is refused there outright.
    r = httpx2.get(mcp_world.downstream_url + "/archive", headers={"Authorization": f"Bearer {agent_token.value}"}, verify=auth.tls_context)
    assert r.status_code == 401


def test_a_revoked_token_stops_the_next_tool_call(mcp_world: McpWorld) -> None:
    auth, wire = mcp_world.auth("agent:revoked"), Wire()

    async def calls_until(pred: Any, c: Client) -> None:
        deadline = time.monotonic() + 15  # the MCP server follows the revocation feed
        while not pred():
            assert time.monotonic() < deadline, wire.seen[-5:]
            await c.call_tool("read_tickets", {})
            await anyio.sleep(0.1)

    async def main() -> None:
        async with session(mcp_world, auth, wire) as c:
            await c.call_tool("read_tickets", {})
            old = auth.cached_token(mcp_world.mcp_url)
            assert old is not None and old.jti
            await anyio.to_thread.run_sync(lambda: mcp_world.broker.cli("revoke", "--jti", old.jti or "", "--reason", "pytest e2e"))
            # The revoked token is refused at the MCP server; the auth drops it
            # and the broker gives a new one (a jti revocation is that token only).
            await calls_until(lambda: (("POST", 401, old.fingerprint) in wire.seen), c)
            new = auth.cached_token(mcp_world.mcp_url)
            assert new is not None and new.jti != old.jti
            i = wire.seen.index(("POST", 401, old.fingerprint))
            assert all(fp != old.fingerprint for _, _, fp in wire.seen[i + 1 :])

            # The kill switch: every token of this agent, and no new one.
            await anyio.to_thread.run_sync(
                lambda: mcp_world.broker.cli("revoke", "--subject", "agent:revoked", "--block-for", "10m", "--reason", "pytest e2e")
            )
            await calls_until(lambda: False, c)

    with pytest.raises(BaseExceptionGroup) as eg:
        anyio.run(main)
    err = first(eg.value, TokenRequestError)
    assert isinstance(err, TokenRequestError), eg.value
    assert err.error == "invalid_request"
    assert wire.seen[-1][1] == 401


def test_the_documented_agent_script(mcp_world: McpWorld, tmp_path: Path) -> None:
    """docs/mcp.md's Python agent, run as documented (with this test's ports)."""
    token_file = tmp_path / "agent.jwt"
    token_file.write_text(mcp_world.oidc.sign("agent:docs"))
    decided: list[dict[str, Any]] = []
    operator = decide_when_pending(mcp_world, "approve", decided)
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "clients/python/examples/mcp_agent.py"),
            "--mcp", mcp_world.mcp_url,
            "--subject-token-file", str(token_file),
            "--ca", str(mcp_world.broker.ca),
            "--scope", "tickets:read",
            "--per-call-scope", "tickets:delete",
            "--call", "read_tickets",
            "--call", "read_archive",
            "--call", "delete_ticket", "--args", '{"id": 7}',
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO / "clients/python/src")},
    )
    operator.join()
    assert out.returncode == 0, out.stdout + out.stderr
    assert "tools: " in out.stdout and "read_tickets: " in out.stdout
    assert "read_archive: " in out.stdout and MCP_SERVER_ID in out.stdout
    assert f"waiting for a human: tessera approve {decided[0]['id']}" in out.stdout
    assert "delete_ticket: " in out.stdout and "delete_ticket: error" not in out.stdout
