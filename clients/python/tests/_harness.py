"""Test harness: a real `tessera` broker process (the binary cargo built),
a small OIDC issuer and a small protected resource, all over real TLS on
127.0.0.1, with the development PKI the broker generates
(`[dev] generate_missing = true`: a CA, server, agent, operator and
payments-api certificates under `keys/dev`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from tessera_client import mtls_context
from tessera_client._dpop import access_token_hash, b64url

REPO = Path(__file__).resolve().parents[3]
AGENT = "spiffe://example.org/agent/demo"
OPERATOR = "spiffe://example.org/operator/alice"


class MissingBinary(RuntimeError):
    """A binary cargo builds is not there."""


def tessera_bin() -> Path:
    p = Path(os.environ.get("TESSERA_BIN", REPO / "target" / "debug" / "tessera"))
    if not p.exists():
        raise MissingBinary(f"{p} missing: build it first with `cargo build --bin tessera` (or set TESSERA_BIN)")
    return p


def example(name: str) -> Path:
    d = Path(os.environ.get("TESSERA_EXAMPLES_DIR", REPO / "target" / "debug" / "examples"))
    p = d / name
    if not p.exists():
        raise MissingBinary(f"{p} missing: build the examples first (`cargo build --examples`, or `cargo test`)")
    return p


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def connects(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_for(what: str, ready: Any, log: Path | None = None, proc: subprocess.Popen[bytes] | None = None, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.05)
    text = log.read_text(errors="replace") if log is not None and log.exists() else ""
    raise RuntimeError(f"{what} did not come up; its log:\n{text}")


@dataclass
class Process:
    """A child process this harness started; stopped by its own pid only."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def spawn(name: str, argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> Process:
    log = cwd / f"{name}.log"
    f = open(log, "wb")
    try:
        p = subprocess.Popen(argv, cwd=cwd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    finally:
        f.close()
    return Process(name, p, log)


@dataclass
class Broker:
    dir: Path
    port: int
    ops_port: int
    process: Process | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def path(self, rel: str) -> Path:
        return self.dir / rel

    @property
    def ca(self) -> Path:
        return self.path("keys/dev/ca.pem")

    def cert(self, name: str) -> tuple[Path, Path]:
        return self.path(f"keys/dev/{name}.pem"), self.path(f"keys/dev/{name}-key.pem")

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """The `tessera` CLI as an operator (the dev operator certificate)."""
        out = subprocess.run(
            [str(tessera_bin()), *args, "--url", self.url],
            cwd=self.dir,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if check and out.returncode != 0:
            raise RuntimeError(f"tessera {' '.join(args)}: exit {out.returncode}\n{out.stdout}\n{out.stderr}")
        return out

    def pending_approvals(self) -> list[dict[str, Any]]:
        out = self.cli("approvals", "list", "--json")
        approvals = json.loads(out.stdout).get("approvals", [])
        return [a for a in approvals if a.get("state") == "pending"]

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


def broker_config(port: int, ops_port: int, body: str) -> str:
    return f"""
[server]
listen = "127.0.0.1:{port}"
issuer = "https://127.0.0.1:{port}"
tls_cert = "keys/dev/server.pem"
tls_key = "keys/dev/server-key.pem"
client_ca = ["keys/dev/ca.pem"]
ops_listen = "127.0.0.1:{ops_port}"

[tokens]
signing_keys = "keys/signing"
algorithm = "ES256"
default_ttl = "5m"
max_ttl = "15m"

[store]
url = "memory://"

[admin]
subjects = ["{OPERATOR}"]

[introspection]
subjects = ["spiffe://example.org/service/payments-api"]

[audit]
sink = "off"

[dev]
generate_missing = true

{body}
"""


def start_broker(d: Path, body: str, port: int | None = None, ops_port: int | None = None, text: str | None = None) -> Broker:
    """A broker in `d` (its working directory: `keys/dev` is generated there),
    on `broker_config(body)`, or on the complete config `text` when given
    (then `port`/`ops_port` must be the ones it names)."""
    d.mkdir(parents=True, exist_ok=True)
    b = Broker(d, port or free_port(), ops_port or free_port())
    (d / "tessera.toml").write_text(text if text is not None else broker_config(b.port, b.ops_port, body))
    b.process = spawn("broker", [str(tessera_bin()), "serve", "--config", "tessera.toml"], d)
    proc = b.process
    wait_for("the broker", lambda: connects(b.ops_port) and connects(b.port), proc.log, proc.popen)
    return b


def server_tls(broker: Broker, client_certs: bool = True) -> ssl.SSLContext:
    """A server context on the broker's dev server certificate (127.0.0.1),
    asking for (not requiring) client certificates from the dev CA."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(broker.path("keys/dev/server.pem")), str(broker.path("keys/dev/server-key.pem")))
    if client_certs:
        ctx.load_verify_locations(str(broker.ca))
        ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


class _Quiet(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        return

    def send_json(self, status: int, body: object, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)


def serve(ctx: ssl.SSLContext, handler: type[BaseHTTPRequestHandler], port: int | None = None) -> ThreadingHTTPServer:
    srv = ThreadingHTTPServer(("127.0.0.1", port or 0), handler)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True, do_handshake_on_connect=False)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


class OidcIssuer:
    """A minimal OIDC issuer: ES256 keys at /jwks, discovery, and `sign`."""

    def __init__(self, broker: Broker, port: int) -> None:
        self.port = port
        self.url = f"https://127.0.0.1:{port}"
        self._key = ec.generate_private_key(ec.SECP256R1())
        self.kid = uuid.uuid4().hex[:12]
        nums = self._key.public_key().public_numbers()
        jwk = {"kty": "EC", "crv": "P-256", "x": b64url(nums.x.to_bytes(32, "big")), "y": b64url(nums.y.to_bytes(32, "big")), "kid": self.kid, "alg": "ES256", "use": "sig"}
        issuer = self

        class H(_Quiet):
            def do_GET(self) -> None:
                if self.path == "/jwks":
                    self.send_json(200, {"keys": [jwk]})
                elif self.path == "/.well-known/openid-configuration":
                    self.send_json(200, {"issuer": issuer.url, "jwks_uri": issuer.url + "/jwks"})
                else:
                    self.send_json(404, {})

        self.server = serve(server_tls(broker, client_certs=False), H, port)

    def sign(self, sub: str, aud: str = "tessera", ttl: int = 300, **extra: Any) -> str:
        now = int(time.time())
        claims = {"iss": self.url, "sub": sub, "aud": aud, "iat": now, "nbf": now, "exp": now + ttl, "jti": str(uuid.uuid4()), **extra}
        header = {"alg": "ES256", "kid": self.kid, "typ": "JWT"}
        si = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
        r, s = decode_dss_signature(self._key.sign(si.encode(), ec.ECDSA(hashes.SHA256())))
        return si + "." + b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))

    def close(self) -> None:
        self.server.shutdown()


def _verify_dpop(proof: str, method: str, url: str, token: str) -> str | None:
    """The proof's key thumbprint if `proof` is a valid ES256 DPoP proof for
    this request and token (signature, typ, htm, htu, ath, iat), else None."""
    try:
        h64, c64, s64 = proof.split(".")
        pad = lambda x: x + "=" * (-len(x) % 4)  # noqa: E731
        header = json.loads(base64.urlsafe_b64decode(pad(h64)))
        claims = json.loads(base64.urlsafe_b64decode(pad(c64)))
        sig = base64.urlsafe_b64decode(pad(s64))
        jwk = header["jwk"]
        if header.get("typ") != "dpop+jwt" or header.get("alg") != "ES256" or jwk.get("crv") != "P-256":
            return None
        x = int.from_bytes(base64.urlsafe_b64decode(pad(jwk["x"])), "big")
        y = int.from_bytes(base64.urlsafe_b64decode(pad(jwk["y"])), "big")
        pub = ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()
        der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
        pub.verify(der, f"{h64}.{c64}".encode(), ec.ECDSA(hashes.SHA256()))
        if claims.get("htm") != method or claims.get("htu") != url.split("?")[0] or claims.get("ath") != access_token_hash(token):
            return None
        if abs(int(claims["iat"]) - time.time()) > 60:
            return None
        thumb = {"crv": jwk["crv"], "kty": jwk["kty"], "x": jwk["x"], "y": jwk["y"]}
        return b64url(hashlib.sha256(json.dumps(thumb, separators=(",", ":"), sort_keys=True).encode()).digest())
    except Exception:
        return None


@dataclass
class Seen:
    method: str
    path: str
    status: int
    token: str | None
    claims: dict[str, Any] | None


@dataclass
class ProtectedResource:
    """A resource server in Python: RFC 9728 metadata, RFC 6750 challenges,
    tokens checked at the broker's `/introspect` (as the payments-api
    service), sender constraints (certificate or DPoP) checked here.

    Routes: GET /tickets (tickets:read), POST /tickets (tickets:write),
    DELETE /tickets/{n} (tickets:delete).
    """

    broker: Broker
    port: int
    seen: list[Seen] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def metadata_url(self) -> str:
        return self.url + "/.well-known/oauth-protected-resource"

    def start(self) -> None:
        rs = self
        cert, key = self.broker.cert("payments-api")
        introspector = httpx2.Client(verify=mtls_context(cert, key, self.broker.ca), timeout=10)
        needed = {("GET", "/tickets"): "tickets:read", ("POST", "/tickets"): "tickets:write", ("DELETE", "/tickets/"): "tickets:delete"}

        class H(_Quiet):
            def _handle(self, method: str) -> None:
                path = self.path.split("?")[0]
                if method == "GET" and path == "/.well-known/oauth-protected-resource":
                    self.send_json(200, {"resource": rs.url, "authorization_servers": [rs.broker.url], "scopes_supported": sorted(set(needed.values())), "bearer_methods_supported": ["header"]})
                    return
                scope = next((s for (m, p), s in needed.items() if m == method and (path == p or (p.endswith("/") and path.startswith(p)))), None)
                if scope is None:
                    self.send_json(404, {"error": "not_found"})
                    return
                n = int(self.headers.get("Content-Length") or 0)
                if n:
                    self.rfile.read(n)
                challenge = f'Bearer resource_metadata="{rs.metadata_url}"'
                auth = self.headers.get("Authorization") or ""
                scheme, _, token = auth.partition(" ")
                if not token:
                    rs._record(method, path, 401, None, None)
                    self.send_json(401, {"error": "unauthorized"}, {"WWW-Authenticate": challenge})
                    return
                claims = introspector.post(rs.broker.url + "/introspect", data={"token": token}).json()
                ok = claims.get("active") is True and claims.get("aud") == rs.url
                cnf = claims.get("cnf") or {}
                if ok and "x5t#S256" in cnf:
                    der = self.connection.getpeercert(binary_form=True)  # type: ignore[attr-defined]
                    ok = scheme == "Bearer" and der is not None and b64url(hashlib.sha256(der).digest()) == cnf["x5t#S256"]
                elif ok and "jkt" in cnf:
                    proof = self.headers.get("DPoP") or ""
                    ok = scheme == "DPoP" and _verify_dpop(proof, method, rs.url + path, token) == cnf["jkt"]
                elif ok:
                    ok = scheme == "Bearer"
                if not ok:
                    rs._record(method, path, 401, token, claims)
                    self.send_json(401, {"error": "invalid_token"}, {"WWW-Authenticate": challenge + ', error="invalid_token"'})
                    return
                if scope not in str(claims.get("scope", "")).split():
                    rs._record(method, path, 403, token, claims)
                    self.send_json(403, {"error": "insufficient_scope"}, {"WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{scope}", resource_metadata="{rs.metadata_url}"'})
                    return
                rs._record(method, path, 200, token, claims)
                self.send_json(200, {"ok": True, "sub": claims.get("sub"), "scope": claims.get("scope"), "authorization_details": claims.get("authorization_details")})

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

            def do_DELETE(self) -> None:
                self._handle("DELETE")

        self.server = serve(server_tls(self.broker), H, self.port)

    def _record(self, method: str, path: str, status: int, token: str | None, claims: dict[str, Any] | None) -> None:
        self.seen.append(Seen(method, path, status, token, claims))

    def close(self) -> None:
        self.server.shutdown()


MCP_SERVER_ID = "spiffe://example.org/service/payments-api"


@dataclass
class McpWorld:
    """The broker on the shipped `config/mcp.toml` (free ports), the MCP
    server example, the downstream API example, and an OIDC issuer for the
    agents' platform tokens."""

    broker: Broker
    oidc: OidcIssuer
    mcp_url: str
    downstream_url: str
    mcp: Process
    downstream: Process

    def auth(self, subject: str, **kw: Any) -> Any:
        from tessera_client import TesseraAuth, mcp_tool_call_details_for

        kw.setdefault("scope", "tickets:read")
        kw.setdefault("authorization_details", mcp_tool_call_details_for(["tickets:delete"]))
        return TesseraAuth(subject_token=lambda: self.oidc.sign(subject), ca=self.broker.ca, **kw)


@contextmanager
def start_mcp_world(d: Path) -> Iterator[McpWorld]:
    mcp_bin, downstream_bin = example("mcp_server"), example("downstream_api")
    port, ops, mcp_port, ds_port, oidc_port = (free_port() for _ in range(5))
    shipped = (REPO / "config" / "mcp.toml").read_text()
    for needle in ("127.0.0.1:8443", "127.0.0.1:9090", "127.0.0.1:8445", "127.0.0.1:8446", 'issuer = "https://127.0.0.1:8447"', 'ttl = "10m"'):
        if needle not in shipped:
            raise RuntimeError(f"config/mcp.toml changed: no {needle}")
    text = (
        shipped.replace("127.0.0.1:8443", f"127.0.0.1:{port}")
        .replace("127.0.0.1:9090", f"127.0.0.1:{ops}")
        .replace("127.0.0.1:8445", f"127.0.0.1:{mcp_port}")
        .replace("127.0.0.1:8446", f"127.0.0.1:{ds_port}")
        # The agents' OIDC issuer is this harness's, trusted through the dev CA.
        .replace('issuer = "https://127.0.0.1:8447"', f'issuer = "https://127.0.0.1:{oidc_port}"\nca = "keys/dev/ca.pem"')
        # Approvals polled every second instead of five.
        .replace('ttl = "10m"', 'ttl = "10m"\ninterval = "1s"', 1)
    )
    broker = start_broker(d, "", port, ops, text=text)
    procs: list[Process] = []
    oidc: OidcIssuer | None = None
    try:
        oidc = OidcIssuer(broker, oidc_port)
        ds_url, mcp_url = f"https://127.0.0.1:{ds_port}", f"https://127.0.0.1:{mcp_port}/mcp"
        ds = spawn("downstream_api", [str(downstream_bin), "--broker", broker.url, "--listen", f"127.0.0.1:{ds_port}"], d)
        procs.append(ds)
        wait_for("the downstream API", lambda: connects(ds_port), ds.log, ds.popen)
        mcp = spawn("mcp_server", [str(mcp_bin), "--broker", broker.url, "--listen", f"127.0.0.1:{mcp_port}", "--downstream", ds_url], d)
        procs.append(mcp)
        wait_for("the MCP server", lambda: connects(mcp_port), mcp.log, mcp.popen)
        yield McpWorld(broker, oidc, mcp_url, ds_url, mcp, ds)
    finally:
        if oidc is not None:
            oidc.close()
        for p in reversed(procs):
            p.stop()
        broker.stop()
