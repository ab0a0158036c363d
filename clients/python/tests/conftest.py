"""Fixtures: one real broker (the `tessera` binary) per session, with a
Python OIDC issuer and a Python protected resource on real TLS."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from _harness import Broker, MissingBinary, OidcIssuer, ProtectedResource, free_port, start_broker, tessera_bin


@dataclass
class World:
    broker: Broker
    oidc: OidcIssuer
    rs: ProtectedResource

    @property
    def agent(self) -> tuple[Path, Path]:
        return self.broker.cert("agent")


def policies(rs_url: str, oidc_port: int) -> str:
    return f"""
[approvals]
ttl = "10m"
interval = "1s"

[[issuers]]
name = "ci"
issuer = "https://127.0.0.1:{oidc_port}"
audiences = ["tessera"]
jwks_uri = "https://127.0.0.1:{oidc_port}/jwks"
ca = "keys/dev/ca.pem"
algorithms = ["ES256"]

[[policies]]
name = "agents"
owner = "alice@example.com"
match = {{ issuer = "mtls", subject = "spiffe://example.org/agent/*" }}
audiences = ["{rs_url}"]
scopes = ["tickets:read", "tickets:write", "tickets:delete"]
approval_scopes = ["tickets:delete"]
max_ttl = "10m"

[[policies]]
name = "ci-jobs"
owner = "bob@example.com"
match = {{ issuer = "ci", subject = "job:*" }}
audiences = ["{rs_url}"]
scopes = ["tickets:read"]
max_ttl = "5m"
"""


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    try:
        tessera_bin()
    except MissingBinary as e:
        pytest.fail(str(e))
    d = tmp_path_factory.mktemp("broker")
    rs_port, oidc_port = free_port(), free_port()
    broker = start_broker(d, policies(f"https://127.0.0.1:{rs_port}", oidc_port))
    try:
        oidc = OidcIssuer(broker, oidc_port)
        rs = ProtectedResource(broker, rs_port)
        rs.start()
        yield World(broker, oidc, rs)
        rs.close()
        oidc.close()
    finally:
        broker.stop()
