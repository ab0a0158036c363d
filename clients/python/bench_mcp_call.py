"""What Tessera adds to one MCP tool call, measured end to end.

Starts the same world as the end-to-end test (the `tessera` broker on
`config/mcp.toml` with free ports, the rmcp MCP server example, the
downstream API, an OIDC issuer for the agent) from the binaries cargo built,
then measures with the official MCP Python SDK client and `TesseraAuth`:

- cached:  `tools/call read_tickets` with the token cached (steady state);
- fetched: the same call after `forget_tokens()`: a token request to the
           broker (new TLS connection, token exchange of the agent's OIDC
           token) and then the call;
- first:   a new `TesseraAuth` on the same session: the 401, RFC 9728 and
           RFC 8414 metadata, the token request, the call again;

and, at the MCP server, with raw HTTP on one keep-alive connection:

- no token:  POST /mcp without `Authorization` (401 before any verification);
- bad sig:   POST /mcp with a token whose signature is wrong (401 after
             parsing it and checking its ES256 signature);
- valid:     POST /mcp with a valid token (verified, then rmcp refuses the
             request for want of a session: verification + routing).

    python clients/python/bench_mcp_call.py [--n 200]

Medians and p90 in milliseconds; each kind interleaved with the others in
rounds, so a noisy moment hurts all alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE / "src"), str(HERE / "tests")]

import anyio  # noqa: E402
import httpx2  # noqa: E402
from mcp import Client  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402

from _harness import McpWorld, start_mcp_world  # noqa: E402
from tessera_client import mcp_http_client  # noqa: E402


WARM = 10  # rounds not counted (connection, caches)


def summary(xs: list[float]) -> str:
    xs = sorted(xs)
    p90 = xs[min(len(xs) - 1, int(len(xs) * 0.9))]
    return f"median {statistics.median(xs) * 1000:7.2f} ms   p90 {p90 * 1000:7.2f} ms   (n={len(xs)})"


async def timed(f: Callable[[], Awaitable[object]]) -> float:
    t = time.perf_counter()
    await f()
    return time.perf_counter() - t


async def client_side(w: McpWorld, n: int) -> dict[str, list[float]]:
    auth = w.auth("agent:bench")
    out: dict[str, list[float]] = {"cached": [], "fetched": [], "first": []}
    async with mcp_http_client(auth) as http:
        async with Client(streamable_http_client(w.mcp_url, http_client=http), cache=None) as c:
            for _ in range(5):  # warm-up: session, connection, token
                await c.call_tool("read_tickets", {})
            for i in range(n):
                out["cached"].append(await timed(lambda: c.call_tool("read_tickets", {})))
                auth.forget_tokens()
                out["fetched"].append(await timed(lambda: c.call_tool("read_tickets", {})))
                if i % 5 == 0:
                    http.auth = w.auth("agent:bench")
                    out["first"].append(await timed(lambda: c.call_tool("read_tickets", {})))
                    http.auth = auth
    return out


def server_side(w: McpWorld, n: int) -> dict[str, list[float]]:
    auth = w.auth("agent:bench-raw")
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}).encode()
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    out: dict[str, list[float]] = {"no token": [], "bad sig": [], "valid": []}
    with httpx2.Client(auth=auth, verify=auth.tls_context, timeout=30) as c:
        c.post(w.mcp_url, content=body, headers=headers)  # discovery + a token
        token = auth.cached_token(w.mcp_url)
        assert token is not None
        head, payload, sig = token.value.split(".")
        bad = f"{head}.{payload}.{sig[:-4]}{'AAAA' if sig[-4:] != 'AAAA' else 'BBBB'}"
    with httpx2.Client(verify=auth.tls_context, timeout=30) as raw:
        kinds = {"no token": None, "bad sig": bad, "valid": token.value}
        statuses: dict[str, set[int]] = {k: set() for k in kinds}
        dropped = {k: 0 for k in kinds}
        for i in range(n + WARM):
            for k, t in kinds.items():
                if i == WARM:
                    out[k].clear()
                h = {**headers, **({"Authorization": f"Bearer {t}"} if t else {})}
                reconnected = False
                for _attempt in range(3):
                    s = time.perf_counter()
                    try:
                        r = raw.post(w.mcp_url, content=body, headers=h)
                    except (httpx2.RemoteProtocolError, httpx2.ReadError):
                        # The server had closed the kept-alive connection: the
                        # retry pays a TLS handshake, which is not what is
                        # measured here, so it is no sample.
                        dropped[k] += 1
                        reconnected = True
                        continue
                    if not reconnected:
                        out[k].append(time.perf_counter() - s)
                    statuses[k].add(r.status_code)
                    break
    print("statuses at the MCP server:", {k: sorted(v) for k, v in statuses.items()}, "samples dropped (connection closed by the server, reconnect not timed):", dropped)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200, help="rounds (default 200)")
    ns = ap.parse_args()
    with tempfile.TemporaryDirectory() as d, start_mcp_world(Path(d)) as w:
        client = anyio.run(client_side, w, ns.n)
        server = server_side(w, ns.n)
    print("one MCP tools/call (read_tickets), client side:")
    for k, v in client.items():
        print(f"  {k:<8} {summary(v)}")
    print("one POST /mcp at the MCP server (raw HTTP, keep-alive):")
    for k, v in server.items():
        print(f"  {k:<8} {summary(v)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
