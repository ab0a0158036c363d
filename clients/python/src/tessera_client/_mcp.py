"""Helpers for MCP (Model Context Protocol) clients."""

from __future__ import annotations

import json
from typing import Any

import httpx2

#: The RFC 9396 `type` of an MCP tool call's authorization details.
MCP_TOOL_CALL = "mcp_tool_call"
_MAX_BODY = 64 * 1024


def mcp_tool_call_details(request: httpx2.Request, scopes: frozenset[str]) -> list[dict[str, Any]] | None:
    """A `DetailsFn` for `TesseraAuth`: when a `tools/call` needs a wider
    scope, the token is asked for that one call, described as RFC 9396
    `authorization_details` (what the approver sees and the token carries):
    `{"type": "mcp_tool_call", "locations": [the MCP endpoint],
    "actions": [tool name], "arguments": {…}}`. Any other request: None (a
    plain wider token).
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
    detail: dict[str, Any] = {
        "type": MCP_TOOL_CALL,
        "locations": [str(request.url.copy_with(query=None, fragment=None))],
        "actions": [params["name"]],
    }
    args = params.get("arguments")
    if isinstance(args, dict):
        detail["arguments"] = args
    return [detail]
