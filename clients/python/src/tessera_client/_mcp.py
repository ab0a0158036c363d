"""Helpers for MCP (Model Context Protocol) clients."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import httpx2

from ._auth import DetailsFn, TesseraAuth

#: The RFC 9396 `type` of an MCP tool call's authorization details.
MCP_TOOL_CALL = "mcp_tool_call"
_MAX_BODY = 64 * 1024


def mcp_tool_call_details(request: httpx2.Request, scopes: frozenset[str]) -> list[dict[str, Any]] | None:
    """A `DetailsFn` for `TesseraAuth`: when a `tools/call` needs a wider
    scope, the token is asked for that one call, described as RFC 9396
    `authorization_details` (what the approver sees, and what the token
    carries for the MCP server to check):
    `[{"type": "mcp_tool_call", "tool": NAME, "arguments": {...}}]`.
    Any other request: None (a plain wider token).
    """
    try:
        body = request.content
    except httpx2.RequestNotRead:
        return None
    if not body or len(body) > _MAX_BODY:
        return None
    try:
        msg = json.loads(body)
    except ValueError:
        return None
    if not isinstance(msg, dict) or msg.get("method") != "tools/call":
        return None
    params = msg.get("params")
    if not isinstance(params, dict) or not isinstance(params.get("name"), str):
        return None
    args = params.get("arguments")
    return [{"type": MCP_TOOL_CALL, "tool": params["name"], "arguments": args if isinstance(args, dict) else {}}]


def mcp_tool_call_details_for(scopes: Iterable[str]) -> DetailsFn:
    """`mcp_tool_call_details`, but only when a missing scope is one of
    `scopes` (typically the broker's approval scopes: each such call is
    approved and tokenised on its own; other step-ups widen the cached
    token instead)."""
    wanted = frozenset(scopes)

    def details(request: httpx2.Request, missing: frozenset[str]) -> list[dict[str, Any]] | None:
        return mcp_tool_call_details(request, missing) if missing & wanted else None

    return details


def mcp_http_client(
    auth: TesseraAuth,
    *,
    timeout: float = 30.0,
    read_timeout: float = 300.0,
    **kwargs: Any,
) -> httpx2.AsyncClient:
    """An `httpx2.AsyncClient` for the MCP SDK's streamable HTTP transport
    (`streamable_http_client(url, http_client=...)`): `auth` on every
    request, the auth's TLS context (its client certificate: the tokens are
    bound to it), the SDK's usual timeouts, no redirects."""
    kwargs.setdefault("verify", auth.tls_context)
    return httpx2.AsyncClient(
        auth=auth,
        timeout=httpx2.Timeout(timeout, read=read_timeout),
        follow_redirects=False,
        **kwargs,
    )
