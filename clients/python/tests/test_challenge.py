"""WWW-Authenticate parsing and URL rules (no network)."""

from __future__ import annotations

from tessera_client import find_challenge, parse_www_authenticate
from tessera_client._auth import _covers, _well_known


def test_bearer_with_resource_metadata() -> None:
    [c] = parse_www_authenticate(['Bearer resource_metadata="https://mcp.example.com/.well-known/oauth-protected-resource/mcp"'])
    assert c.scheme == "bearer"
    assert c.resource_metadata == "https://mcp.example.com/.well-known/oauth-protected-resource/mcp"
    assert c.error is None and c.scope == frozenset()


def test_insufficient_scope_with_several_scopes_and_escapes() -> None:
    [c] = parse_www_authenticate(['Bearer realm="a \\"quoted\\" realm", error="insufficient_scope", scope="tickets:read tickets:write", error_description="needs \\\\ more"'])
    assert c.error == "insufficient_scope"
    assert c.scope == frozenset({"tickets:read", "tickets:write"})
    assert c.params["realm"] == 'a "quoted" realm'
    assert c.params["error_description"] == "needs \\ more"


def test_several_challenges_in_one_header_and_across_headers() -> None:
    cs = parse_www_authenticate([
        'Basic realm="x", DPoP algs="ES256 EdDSA", error="invalid_token"',
        "Bearer error=invalid_token,resource_metadata=\"https://r/m\"",
    ])
    assert [c.scheme for c in cs] == ["basic", "dpop", "bearer"]
    assert cs[1].params == {"algs": "ES256 EdDSA", "error": "invalid_token"}
    assert cs[2].params == {"error": "invalid_token", "resource_metadata": "https://r/m"}
    assert find_challenge(cs) is cs[1], "the server's order decides between Bearer and DPoP"
    assert find_challenge(cs, ("bearer",)) is cs[2]


def test_token68_and_case_insensitive_names() -> None:
    cs = parse_www_authenticate(["Negotiate abc123==, BEARER Scope=\"a\""])
    assert cs[0].params == {"token68": "abc123=="}
    assert cs[1].scheme == "bearer" and cs[1].scope == frozenset({"a"})


def test_duplicates_keep_the_first_and_malformed_input_stops_safely() -> None:
    [c] = parse_www_authenticate(['Bearer scope="a", scope="b"'])
    assert c.scope == frozenset({"a"})
    # An unterminated quoted string: what came before is kept, nothing raises.
    [c] = parse_www_authenticate(['Bearer error="invalid_token", scope="unterminated'])
    assert c.error == "invalid_token" and "scope" not in c.params
    assert parse_www_authenticate(["", "   ", ",,,", "@@@"]) == []
    assert parse_www_authenticate(["Bearer x=" + "a" * 10000]) == [], "oversized headers are skipped"


def test_a_resource_covers_its_own_urls_only() -> None:
    assert _covers("https://mcp.example.com", "https://mcp.example.com/mcp")
    assert _covers("https://mcp.example.com/", "https://mcp.example.com:443/mcp?x=1")
    assert _covers("https://mcp.example.com/mcp", "https://mcp.example.com/mcp")
    assert _covers("https://mcp.example.com/mcp", "https://mcp.example.com/mcp/sub")
    assert not _covers("https://mcp.example.com/mcp", "https://mcp.example.com/mcpevil")
    assert not _covers("https://mcp.example.com", "https://mcp.example.com.evil.org/mcp")
    assert not _covers("https://mcp.example.com", "http://mcp.example.com/mcp")
    assert not _covers("https://mcp.example.com:8443", "https://mcp.example.com/mcp")


def test_well_known_goes_between_host_and_path() -> None:
    assert _well_known("https://as.example", "oauth-authorization-server") == "https://as.example/.well-known/oauth-authorization-server"
    assert _well_known("https://as.example/tenant/1/", "oauth-authorization-server") == "https://as.example/.well-known/oauth-authorization-server/tenant/1"


def test_mcp_tool_call_details_describe_exactly_the_call() -> None:
    import json as _json

    import httpx2

    from tessera_client import mcp_tool_call_details, mcp_tool_call_details_for

    def req(body: object) -> httpx2.Request:
        return httpx2.Request("POST", "https://mcp.example.com/mcp?x=1", content=_json.dumps(body).encode())

    call = req({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "delete_ticket", "arguments": {"id": 7}}})
    assert mcp_tool_call_details(call, frozenset({"tickets:delete"})) == [{"type": "mcp_tool_call", "tool": "delete_ticket", "arguments": {"id": 7}}]
    assert mcp_tool_call_details(req({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}), frozenset()) is None
    assert mcp_tool_call_details(httpx2.Request("POST", "https://m/mcp", content=b"not json"), frozenset()) is None
    only_delete = mcp_tool_call_details_for(["tickets:delete"])
    assert only_delete(call, frozenset({"tickets:write"})) is None
    assert only_delete(call, frozenset({"tickets:delete"})) is not None
