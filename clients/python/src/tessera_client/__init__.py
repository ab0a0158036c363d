"""Tessera's agent-side client: an `httpx2.Auth` that finds the
authorization server of a protected resource (RFC 9728 -> RFC 8414), gets
short-lived tokens per (resource, scope set) over mTLS or DPoP, caches them
until shortly before they expire, steps up on `insufficient_scope`, and
waits politely for human approvals.

    import httpx2
    from tessera_client import TesseraAuth, mtls_context

    auth = TesseraAuth(cert="agent.pem", key="agent-key.pem", ca="ca.pem", scope="tickets:read")
    with httpx2.Client(auth=auth, verify=mtls_context("agent.pem", "agent-key.pem", "ca.pem")) as c:
        c.get("https://mcp.example.com/mcp")
"""

from ._auth import (
    ACCESS_TOKEN_TYPE,
    JWT_TOKEN_TYPE,
    TOKEN_EXCHANGE,
    DetailsFn,
    Resource,
    SubjectToken,
    TesseraAuth,
    Token,
    token_fingerprint,
)
from ._challenge import Challenge, find_challenge, parse_www_authenticate
from ._dpop import DPoPKey
from ._errors import (
    ApprovalDenied,
    ApprovalExpired,
    ApprovalTimeout,
    DiscoveryError,
    TesseraError,
    TokenRequestError,
)
from ._mcp import MCP_TOOL_CALL, mcp_http_client, mcp_tool_call_details, mcp_tool_call_details_for
from ._tls import mtls_context

__all__ = [
    "ACCESS_TOKEN_TYPE",
    "JWT_TOKEN_TYPE",
    "MCP_TOOL_CALL",
    "TOKEN_EXCHANGE",
    "ApprovalDenied",
    "ApprovalExpired",
    "ApprovalTimeout",
    "Challenge",
    "DPoPKey",
    "DetailsFn",
    "DiscoveryError",
    "Resource",
    "SubjectToken",
    "TesseraAuth",
    "TesseraError",
    "Token",
    "TokenRequestError",
    "find_challenge",
    "mcp_http_client",
    "mcp_tool_call_details",
    "mcp_tool_call_details_for",
    "mtls_context",
    "parse_www_authenticate",
    "token_fingerprint",
]
