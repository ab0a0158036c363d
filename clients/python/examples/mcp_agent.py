"""An MCP agent with Tessera tokens: the official MCP Python SDK's client
(streamable HTTP) with `tessera_client.TesseraAuth` on its HTTP client.

    python clients/python/examples/mcp_agent.py --mcp https://127.0.0.1:8445/mcp \
        --subject-token-file agent.jwt --ca keys/dev/ca.pem \
        --scope tickets:read --per-call-scope tickets:delete \
        --call read_tickets --call delete_ticket --args '{"id": 7}'

The agent proves itself with a platform token (`--subject-token-file`, read
again for every token request: it may rotate) or with its client
certificate (`--cert`, `--key`; the tokens are then bound to it).

Each `--call TOOL` (with `--args JSON` after it for arguments) calls one tool
after listing them. The first request gets a 401 whose `resource_metadata`
leads to the broker; a tool that needs more than `--scope` gets a 403 and the
auth asks for the wider scope, carrying the call as authorization_details
(an approval scope waits until an operator runs `tessera approve ID`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import anyio
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tessera_client import TesseraAuth, TesseraError, mcp_http_client, mcp_tool_call_details, mcp_tool_call_details_for


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mcp", required=True, help="the MCP server's endpoint URL")
    p.add_argument("--subject-token-file", default=None, help="a file holding the agent's platform (OIDC) token")
    p.add_argument("--cert", default=None, help="the agent's client certificate (PEM), instead of a subject token")
    p.add_argument("--key", default=None, help="its private key (PEM)")
    p.add_argument("--ca", required=True, help="the CA that issued the broker's and the MCP server's certificates")
    p.add_argument("--scope", default="", help="scopes to ask for up front (space-separated)")
    p.add_argument("--per-call-scope", action="append", default=[], metavar="SCOPE", help="a scope asked for one tools/call at a time, with the call as authorization_details (an approval scope); default: every step-up")
    p.add_argument("--task", default=None, help="the task id the tokens are for")
    p.add_argument("--call", action="append", default=[], metavar="TOOL", help="a tool to call (repeatable)")
    p.add_argument("--args", action="append", default=[], metavar="JSON", help="arguments of the preceding --call")
    p.add_argument("-v", "--verbose", action="store_true", help="log what the auth does (never a token)")
    return p.parse_args(argv)


def calls(argv: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """(tool, arguments) in command-line order: `--args` belongs to the `--call` before it."""
    out: list[tuple[str, dict[str, Any]]] = []
    it = iter(argv)
    for a in it:
        if a == "--call":
            out.append((next(it), {}))
        elif a == "--args" and out:
            out[-1] = (out[-1][0], json.loads(next(it)))
    return out


async def run(ns: argparse.Namespace, todo: list[tuple[str, dict[str, Any]]]) -> int:
    auth = TesseraAuth(
        cert=ns.cert,
        key=ns.key,
        subject_token=Path(ns.subject_token_file) if ns.subject_token_file else None,
        ca=ns.ca,
        scope=ns.scope,
        task=ns.task,
        authorization_details=mcp_tool_call_details_for(ns.per_call_scope) if ns.per_call_scope else mcp_tool_call_details,
        on_pending=lambda aid: print(f"waiting for a human: tessera approve {aid}", flush=True),
    )
    status = 0
    async with mcp_http_client(auth) as http:
        async with Client(streamable_http_client(ns.mcp, http_client=http), cache=None) as client:
            tools = await client.list_tools()
            print("tools:", " ".join(t.name for t in tools.tools), flush=True)
            for name, arguments in todo:
                result = await client.call_tool(name, arguments)
                text = " ".join(getattr(c, "text", "") for c in result.content)
                print(f"{name}: {'error: ' if result.is_error else ''}{text}", flush=True)
                status = status or (1 if result.is_error else 0)
    return status


def first(group: BaseExceptionGroup[BaseException], kind: type[BaseException]) -> BaseException | None:
    """The first exception of `kind` in a (nested) exception group."""
    for e in group.exceptions:
        if isinstance(e, kind):
            return e
        if isinstance(e, BaseExceptionGroup):
            found = first(e, kind)
            if found is not None:
                return found
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ns = parse_args(argv)
    if ns.verbose:
        logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
        logging.getLogger("httpx2").setLevel(logging.WARNING)
    try:
        return anyio.run(run, ns, calls(argv))
    except TesseraError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except BaseExceptionGroup as g:  # the MCP SDK's task group: report the Tessera cause
        cause = first(g, TesseraError)
        if cause is None:
            raise
        print(f"error: {cause}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
