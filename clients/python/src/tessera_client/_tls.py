"""TLS contexts for mTLS (RFC 8705)."""

from __future__ import annotations

import ssl
from pathlib import Path


def mtls_context(
    cert: str | Path | None = None,
    key: str | Path | None = None,
    ca: str | Path | None = None,
) -> ssl.SSLContext:
    """A client TLS context (TLS 1.2+) that trusts `ca` (the system store
    when None) and presents `cert`/`key` when given.

    Tessera binds tokens issued over a client certificate to it
    (`cnf.x5t#S256`): use the same context for the resource server.
    """
    ctx = ssl.create_default_context(cafile=str(ca) if ca is not None else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key) if key is not None else None)
    elif key is not None:
        raise ValueError("a client key without its certificate")
    return ctx
