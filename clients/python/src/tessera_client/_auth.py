"""`TesseraAuth`: an `httpx2.Auth` that gets Tessera tokens for the
resource servers it talks to.

The flow for one request, shared by the sync and async clients (the logic
is one generator, `_flow`; the two drivers only do its I/O):

1. A resource already known (an earlier `401` named its metadata): attach
   the cached token for its scope set, or fetch one first.
2. `401` with `WWW-Authenticate: Bearer resource_metadata="…"` (RFC 9728
   §5.1): fetch the protected resource metadata, check that it describes the
   URL asked for, pick its authorization server, fetch that server's RFC 8414
   metadata, get a token for (`resource`, scopes) and send the request again.
   A `401` for a token this auth sent drops that token for good (revoked, or
   expired early) and asks the broker once more: the broker decides.
3. `403` with `error="insufficient_scope", scope="…"` (RFC 6750 §3.1): one
   more token for the wider scope set, one retry.

A token request that answers `authorization_pending` (a human must approve)
is repeated with its `approval_id` every `interval` seconds (`slow_down`
adds 5 s, RFC 8628 §3.5) until it is granted, denied (`ApprovalDenied`),
expires (`ApprovalExpired`) or `max_wait` passes (`ApprovalTimeout`).

Nothing here logs or raises a token: logs name the resource, the scopes,
the token's `jti` and a SHA-256 prefix.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import ssl
import threading
import time
import urllib.parse
from collections.abc import AsyncGenerator, Callable, Generator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import anyio
import httpx2

from ._challenge import Challenge, find_challenge, parse_www_authenticate
from ._dpop import DPoPKey
from ._errors import (
    ApprovalDenied,
    ApprovalExpired,
    ApprovalTimeout,
    DiscoveryError,
    TesseraError,
    TokenRequestError,
    _clean,
)
from ._tls import mtls_context

_log = logging.getLogger("tessera_client")

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"

#: Largest metadata or token response read (bytes).
MAX_BODY = 256 * 1024
#: Longest `Retry-After` honoured on a `429` (seconds), and how many `429`s in a row.
MAX_RETRY_AFTER = 60.0
MAX_RATE_LIMITED = 5
#: How long discovered metadata is reused before it is fetched again (seconds).
METADATA_TTL = 3600.0

SubjectToken = Union[str, Path, Callable[[], str]]
#: Given the request that needs the wider scope and the scopes it lacks:
#: RFC 9396 `authorization_details` for the token that will carry exactly
#: that call, or None for a plain wider token.
DetailsFn = Callable[[httpx2.Request, frozenset[str]], Union[list[dict[str, Any]], None]]


def token_fingerprint(token: str) -> str:
    """What logs say instead of a token: `sha256:` and 12 hex digits."""
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()[:12]


def _unverified_jti(token: str) -> str | None:
    """The `jti` of a JWT, read without verification (for logs only)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        jti = claims.get("jti") if isinstance(claims, dict) else None
        return _clean(jti, 64) if isinstance(jti, str) else None
    except (IndexError, ValueError):
        return None


# ---------------------------------------------------------------------------
# The steps the flow asks its driver to perform.


@dataclass(frozen=True)
class _Http:
    method: str
    url: str
    headers: dict[str, str]
    form: dict[str, str] | None = None


@dataclass(frozen=True)
class _Sleep:
    seconds: float


@dataclass(frozen=True)
class _Acquire:
    key: tuple[str, frozenset[str]]


@dataclass(frozen=True)
class _Release:
    key: tuple[str, frozenset[str]]


@dataclass(frozen=True)
class _Resp:
    status: int
    headers: httpx2.Headers
    body: bytes

    def json_object(self) -> dict[str, Any] | None:
        try:
            v = json.loads(self.body)
        except ValueError:
            return None
        return v if isinstance(v, dict) else None


_Step = Union[httpx2.Request, _Http, _Sleep, _Acquire, _Release]
_Flow = Generator[_Step, Any, None]


@dataclass(frozen=True)
class Resource:
    """A protected resource as discovered (RFC 9728 + RFC 8414)."""

    resource: str
    issuer: str
    token_endpoint: str
    scopes_supported: tuple[str, ...]
    dpop_required: bool
    fetched_at: float = field(default=0.0, compare=False)


@dataclass(frozen=True)
class Token:
    """An access token and what it is good for. Its `repr` hides the value."""

    value: str = field(repr=False)
    scheme: str  # "Bearer" or "DPoP"
    resource: str
    scopes: frozenset[str]
    expires_at: float  # time.monotonic() after which it is not used
    jti: str | None = None
    detailed: bool = False  # carries authorization_details: one call only

    @property
    def fingerprint(self) -> str:
        return token_fingerprint(self.value)


def _origin(u: urllib.parse.SplitResult) -> tuple[str, str, int | None]:
    port = u.port or {"https": 443, "http": 80}.get(u.scheme)
    return (u.scheme, (u.hostname or "").lower(), port)


def _covers(resource: str, url: str) -> bool:
    """Does `resource` (RFC 9728 `resource`) name the server `url` is on:
    same origin, and its path a prefix of the URL's on a segment boundary."""
    try:
        r = urllib.parse.urlsplit(resource)
        u = urllib.parse.urlsplit(url)
        if _origin(r) != _origin(u):
            return False
    except ValueError:
        return False
    rp = r.path.rstrip("/")
    return rp == "" or u.path == rp or u.path.startswith(rp + "/")


def _https(url: str) -> bool:
    try:
        u = urllib.parse.urlsplit(url)
    except ValueError:
        return False
    return u.scheme == "https" and bool(u.hostname) and not u.fragment


def _well_known(base: str, name: str) -> str:
    """RFC 8414 §3 / RFC 9728 §3: the well-known segment goes between the
    host and the path."""
    u = urllib.parse.urlsplit(base)
    path = u.path.rstrip("/")
    return urllib.parse.urlunsplit((u.scheme, u.netloc, f"/.well-known/{name}{path}", "", ""))


class TesseraAuth(httpx2.Auth):
    """Tessera tokens for every request of an `httpx2` client.

    Identity (one of):

    * `cert`, `key`: a client certificate; without `subject_token` the
      token request is the `client_credentials` shorthand (the certificate
      is the subject), with it a token exchange over mTLS. Tokens come back
      bound to the certificate (`cnf.x5t#S256`): send the resource
      requests over the same certificate (`verify=mtls_context(cert, key, ca)`).
    * `subject_token` (a string, a file path read on every request, or a
      callable) without a certificate: a token exchange, DPoP-bound when
      `dpop` is set (a `DPoPKey`, or True for a fresh one).

    Trust: the authorization server a resource server names is used only if
    it equals `issuer`, or — when `issuer` is None — if its certificate
    chains to `ca` (a private CA pins the broker). One of the two is required:
    a resource server must not be able to send this client's credentials to
    a server of its choosing.

    `scope`: the scopes asked for every resource (the `scope` of a `401`
    challenge is added). `authorization_details`: a `DetailsFn` used when a
    `403 insufficient_scope` asks for more (`mcp_tool_call_details` for MCP).
    `on_pending(approval_id)` is called once when a token request waits for
    a human. `max_wait` bounds that wait (seconds).
    """

    requires_request_body = True  # a retry sends the body again

    def __init__(
        self,
        *,
        cert: str | Path | None = None,
        key: str | Path | None = None,
        ca: str | Path | None = None,
        issuer: str | None = None,
        scope: str | Iterable[str] = (),
        subject_token: SubjectToken | None = None,
        subject_token_type: str = JWT_TOKEN_TYPE,
        dpop: DPoPKey | bool = False,
        task: str | None = None,
        expires_in: int | None = None,
        authorization_details: DetailsFn | None = None,
        on_pending: Callable[[str], None] | None = None,
        max_wait: float = 600.0,
        refresh_margin: float = 30.0,
        timeout: float = 10.0,
    ) -> None:
        if cert is None and subject_token is None:
            raise ValueError("give a client certificate (cert, key) or a subject_token")
        if cert is not None and key is None:
            raise ValueError("cert needs its key")
        if cert is not None and dpop:
            raise ValueError("DPoP is for clients without a certificate (mTLS already binds the token)")
        if issuer is None and ca is None:
            raise ValueError("pin the authorization server: give issuer= or a private ca=")
        if issuer is not None and not _https(issuer):
            raise ValueError("issuer must be an https URL")
        self._ssl = mtls_context(cert, key, ca)
        self._mtls = cert is not None
        self._issuer = issuer
        self._base_scopes = frozenset(scope.split() if isinstance(scope, str) else scope)
        self._subject_token = subject_token
        self._subject_token_type = subject_token_type
        self._dpop: DPoPKey | None = DPoPKey() if dpop is True else (dpop or None)
        self._task = task
        self._expires_in = expires_in
        self._details_fn = authorization_details
        self._on_pending = on_pending
        self._max_wait = max_wait
        self._refresh_margin = refresh_margin
        self._timeout = timeout
        # State shared by every request (dict operations are atomic; token
        # fetches for one key are serialised by the driver's locks).
        self._resources: dict[str, Resource] = {}  # by `resource`
        self._by_metadata_url: dict[str, Resource] = {}
        self._as_metadata: dict[str, tuple[str, float]] = {}  # issuer -> (token_endpoint, at)
        self._wanted: dict[str, frozenset[str]] = {}  # resource -> scopes
        self._cache: dict[tuple[str, frozenset[str]], Token] = {}
        self._as_nonce: str | None = None
        self._sync_locks: dict[tuple[str, frozenset[str]], threading.Lock] = {}
        self._async_locks: dict[tuple[str, frozenset[str]], anyio.Lock] = {}
        self._locks_guard = threading.Lock()
        self.tokens_fetched = 0  # how many tokens this auth has asked for (observability)

    def __repr__(self) -> str:
        mode = "mtls" if self._mtls else ("dpop" if self._dpop else "bearer")
        return f"TesseraAuth(mode={mode}, issuer={self._issuer!r}, scope={sorted(self._base_scopes)!r})"

    # -- public helpers ----------------------------------------------------

    @property
    def dpop_key(self) -> DPoPKey | None:
        return self._dpop

    @property
    def tls_context(self) -> ssl.SSLContext:
        """The TLS context this auth uses for the broker (its `ca`, and its
        certificate when it has one): the one to reach resource servers with,
        since tokens issued over a certificate are bound to it."""
        return self._ssl

    def cached_token(self, url: str) -> Token | None:
        """The token this auth would send to `url` now (None if it would fetch)."""
        res = self._resource_for(url)
        return None if res is None else self._cached(res, self._scopes_for(res))

    def forget_tokens(self) -> None:
        """Drops every cached token (discovered metadata is kept)."""
        self._cache.clear()

    # -- the flow ----------------------------------------------------------

    def _resource_for(self, url: str) -> Resource | None:
        best: Resource | None = None
        for r in list(self._resources.values()):
            if _covers(r.resource, url) and (best is None or len(r.resource) > len(best.resource)):
                best = r
        return best

    def _scopes_for(self, res: Resource) -> frozenset[str]:
        return self._wanted.get(res.resource, self._base_scopes)

    def _cached(self, res: Resource, scopes: frozenset[str]) -> Token | None:
        t = self._cache.get((res.resource, scopes))
        if t is not None and t.expires_at > time.monotonic():
            return t
        return None

    def _forget(self, token: Token) -> None:
        key = (token.resource, token.scopes)
        if self._cache.get(key) is token:
            del self._cache[key]
        _log.info("token %s (jti=%s) for %s refused by the resource server; not used again", token.fingerprint, token.jti, token.resource)

    def _authorize(self, request: httpx2.Request, token: Token) -> None:
        request.headers["Authorization"] = f"{token.scheme} {token.value}"
        if token.scheme == "DPoP" and self._dpop is not None:
            request.headers["DPoP"] = self._dpop.proof(request.method, str(request.url), access_token=token.value)
        elif "DPoP" in request.headers:
            del request.headers["DPoP"]

    @staticmethod
    def _challenge(response: httpx2.Response) -> Challenge | None:
        return find_challenge(parse_www_authenticate(response.headers.get_list("www-authenticate")))

    def _flow(self, request: httpx2.Request) -> _Flow:
        url = str(request.url)
        res = self._resource_for(url)
        sent: Token | None = None
        if res is not None:
            sent = yield from self._obtain(res, self._scopes_for(res), None)
            self._authorize(request, sent)
        response: httpx2.Response = yield request

        if response.status_code == 401:
            ch = self._challenge(response)
            if ch is None:
                return
            if sent is not None:
                self._forget(sent)
            res = yield from self._discover(url, ch)
            scopes = self._scopes_for(res) | ch.scope
            if not scopes:
                raise DiscoveryError(f"{res.resource} names no scope and none was configured: give scope=")
            self._wanted[res.resource] = scopes
            sent = yield from self._obtain(res, scopes, None)
            self._authorize(request, sent)
            response = yield request

        if response.status_code == 403 and sent is not None and res is not None:
            ch = self._challenge(response)
            if ch is None or ch.error != "insufficient_scope" or not ch.scope:
                return
            scopes = sent.scopes | ch.scope
            if scopes == sent.scopes:
                return  # the server wants what the token has: asking again cannot help
            details = self._details_fn(request, ch.scope - sent.scopes) if self._details_fn else None
            if details is None:
                self._wanted[res.resource] = self._scopes_for(res) | ch.scope
            _log.info("%s needs scope %s: asking for %s", res.resource, " ".join(sorted(ch.scope)), " ".join(sorted(scopes)))
            sent = yield from self._obtain(res, scopes, details)
            self._authorize(request, sent)
            yield request

    def _obtain(
        self,
        res: Resource,
        scopes: frozenset[str],
        details: list[dict[str, Any]] | None,
    ) -> Generator[_Step, Any, Token]:
        """A token for (resource, scopes): the cached one, or a new one.
        A token carrying `authorization_details` is for one call: never cached."""
        if details is not None:
            return (yield from self._request_token(res, scopes, details))
        key = (res.resource, scopes)
        yield _Acquire(key)
        cached = self._cached(res, scopes)
        if cached is not None:
            yield _Release(key)
            return cached
        token = yield from self._request_token(res, scopes, None)
        self._cache[key] = token
        yield _Release(key)
        return token

    # -- discovery ---------------------------------------------------------

    def _get_json(self, url: str, what: str) -> Generator[_Step, Any, dict[str, Any]]:
        resp: _Resp = yield _Http("GET", url, {"Accept": "application/json"})
        if resp.status != 200:
            raise DiscoveryError(f"{what} at {_clean(url)}: HTTP {resp.status}")
        obj = resp.json_object()
        if obj is None:
            raise DiscoveryError(f"{what} at {_clean(url)}: not a JSON object")
        return obj

    def _discover(self, url: str, ch: Challenge) -> Generator[_Step, Any, Resource]:
        rm = ch.resource_metadata
        if rm is None:
            # RFC 9728 §3.1: the well-known URL of the server asked.
            u = urllib.parse.urlsplit(url)
            rm = _well_known(urllib.parse.urlunsplit((u.scheme, u.netloc, "", "", "")), "oauth-protected-resource")
        elif not (_https(rm) or _origin(urllib.parse.urlsplit(rm)) == _origin(urllib.parse.urlsplit(url))):
            raise DiscoveryError(f"resource_metadata {_clean(rm)} is neither https nor on the server asked")
        known = self._by_metadata_url.get(rm)
        if known is not None and time.monotonic() - known.fetched_at < METADATA_TTL:
            return known

        meta = yield from self._get_json(rm, "protected resource metadata")
        resource = meta.get("resource")
        if not isinstance(resource, str) or not _covers(resource, url):
            # RFC 9728 §7.3: metadata for another resource is an impersonation attempt.
            raise DiscoveryError(f"protected resource metadata at {_clean(rm)} does not describe {_clean(url)}")
        servers = meta.get("authorization_servers")
        if not isinstance(servers, list) or not all(isinstance(s, str) for s in servers) or not servers:
            raise DiscoveryError(f"protected resource metadata at {_clean(rm)} names no authorization_servers")
        if self._issuer is not None:
            if self._issuer not in servers:
                raise DiscoveryError(f"{_clean(resource)} does not accept tokens from {self._issuer}")
            issuer = self._issuer
        else:
            https = [s for s in servers if _https(s)]
            if not https:
                raise DiscoveryError(f"{_clean(resource)} names no https authorization server")
            issuer = https[0]
        scopes = meta.get("scopes_supported")
        scopes_supported = tuple(s for s in scopes if isinstance(s, str)) if isinstance(scopes, list) else ()
        dpop_required = meta.get("dpop_bound_access_tokens_required") is True
        if dpop_required and self._dpop is None:
            raise DiscoveryError(f"{_clean(resource)} requires DPoP-bound tokens: construct TesseraAuth with dpop=")

        token_endpoint = yield from self._token_endpoint(issuer)
        res = Resource(resource, issuer, token_endpoint, scopes_supported, dpop_required, time.monotonic())
        self._resources[resource] = res
        self._by_metadata_url[rm] = res
        _log.info("%s is protected by %s (token endpoint %s)", resource, issuer, token_endpoint)
        return res

    def _token_endpoint(self, issuer: str) -> Generator[_Step, Any, str]:
        known = self._as_metadata.get(issuer)
        if known is not None and time.monotonic() - known[1] < METADATA_TTL:
            return known[0]
        meta = yield from self._get_json(_well_known(issuer, "oauth-authorization-server"), "authorization server metadata")
        if meta.get("issuer") != issuer:
            # RFC 8414 §3.3: the metadata must be the issuer's own.
            raise DiscoveryError(f"authorization server metadata of {issuer} names another issuer")
        te = meta.get("token_endpoint")
        if not isinstance(te, str) or not _https(te):
            raise DiscoveryError(f"authorization server {issuer} has no https token_endpoint")
        self._as_metadata[issuer] = (te, time.monotonic())
        return te

    # -- the token request -------------------------------------------------

    def _subject(self) -> str:
        st = self._subject_token
        if st is None:
            raise TesseraError("no subject token")
        if callable(st):
            v = st()
        elif isinstance(st, Path):
            v = st.read_text().strip()
        else:
            v = st
        if not isinstance(v, str) or not v:
            raise TesseraError("the subject token source gave no token")
        return v

    def _form(self, res: Resource, scopes: frozenset[str], details: list[dict[str, Any]] | None) -> dict[str, str]:
        form = {"resource": res.resource, "scope": " ".join(sorted(scopes))}
        if self._subject_token is None:
            form["grant_type"] = "client_credentials"
        else:
            form["grant_type"] = TOKEN_EXCHANGE
            form["subject_token"] = self._subject()
            form["subject_token_type"] = self._subject_token_type
        if self._task is not None:
            form["task"] = self._task
        if self._expires_in is not None:
            form["expires_in"] = str(int(self._expires_in))
        if details is not None:
            form["authorization_details"] = json.dumps(details, separators=(",", ":"))
        return form

    def _request_token(
        self, res: Resource, scopes: frozenset[str], details: list[dict[str, Any]] | None
    ) -> Generator[_Step, Any, Token]:
        started = time.monotonic()
        slept = 0.0  # the waits asked for (the driver may take longer)
        approval_id: str | None = None
        interval = 5.0
        rate_limited = 0
        nonce_retried = False
        while True:
            form = self._form(res, scopes, details)
            if approval_id is not None:
                form["approval_id"] = approval_id
            headers = {"Accept": "application/json"}
            if self._dpop is not None:
                headers["DPoP"] = self._dpop.proof("POST", res.token_endpoint, nonce=self._as_nonce)
            resp: _Resp = yield _Http("POST", res.token_endpoint, headers, form)
            nonce = resp.headers.get("dpop-nonce")
            if nonce:
                self._as_nonce = nonce
            if resp.status == 200:
                return self._token_from(res, scopes, details, resp)

            body = resp.json_object() or {}
            raw_error, raw_description = body.get("error"), body.get("error_description")
            error: str = raw_error if isinstance(raw_error, str) else f"http_{resp.status}"
            description = raw_description if isinstance(raw_description, str) else None
            if error == "authorization_pending" and resp.status == 400:
                aid = body.get("approval_id")
                if not isinstance(aid, str) or not aid or len(aid) > 128:
                    raise TokenRequestError(resp.status, error, "authorization_pending without an approval_id")
                if approval_id is None:
                    _log.info("waiting for a human to approve %s (scope %s for %s)", _clean(aid, 128), form["scope"], res.resource)
                    if self._on_pending is not None:
                        self._on_pending(aid)
                approval_id = aid
                iv = body.get("interval")
                if isinstance(iv, int) and not isinstance(iv, bool) and iv >= 0:
                    interval = max(float(iv), 1.0)
                wait = interval
            elif error == "slow_down" and resp.status == 400:
                interval += 5.0  # RFC 8628 §3.5
                wait = interval
            elif resp.status == 429 and rate_limited < MAX_RATE_LIMITED:
                rate_limited += 1
                try:
                    wait = min(max(float(resp.headers.get("retry-after", "1")), 0.0), MAX_RETRY_AFTER)
                except ValueError:
                    wait = 1.0
            elif error == "use_dpop_nonce" and self._dpop is not None and not nonce_retried and nonce:
                nonce_retried = True  # RFC 9449 §8: once, with the server's nonce
                continue
            elif error == "access_denied" and approval_id is not None:
                raise ApprovalDenied(resp.status, error, description)
            elif error == "expired_token" and approval_id is not None:
                raise ApprovalExpired(resp.status, error, description)
            else:
                raise TokenRequestError(resp.status, error, description)

            waited = max(time.monotonic() - started, slept)
            if waited + wait > self._max_wait:
                raise ApprovalTimeout(approval_id or "-", waited)
            slept += wait
            yield _Sleep(wait)

    def _token_from(
        self, res: Resource, scopes: frozenset[str], details: list[dict[str, Any]] | None, resp: _Resp
    ) -> Token:
        body = resp.json_object()
        if body is None:
            raise TokenRequestError(resp.status, "invalid_response", "token response is not a JSON object")
        value = body.get("access_token")
        token_type = body.get("token_type")
        expires_in = body.get("expires_in")
        if not isinstance(value, str) or not value or len(value) > 16384 or not value.isascii() or not value.isprintable():
            raise TokenRequestError(resp.status, "invalid_response", "no usable access_token")
        if not isinstance(token_type, str) or token_type.lower() not in ("bearer", "dpop"):
            raise TokenRequestError(resp.status, "invalid_response", "unknown token_type")
        scheme = "DPoP" if token_type.lower() == "dpop" else "Bearer"
        if (scheme == "DPoP") != (self._dpop is not None):
            raise TokenRequestError(resp.status, "invalid_response", f"a {scheme} token was not what was asked for")
        if not isinstance(expires_in, int) or isinstance(expires_in, bool) or expires_in <= 0:
            raise TokenRequestError(resp.status, "invalid_response", "no usable expires_in")
        margin = min(self._refresh_margin, expires_in / 4)
        token = Token(
            value=value,
            scheme=scheme,
            resource=res.resource,
            scopes=scopes,
            expires_at=time.monotonic() + expires_in - margin,
            jti=_unverified_jti(value),
            detailed=details is not None,
        )
        self.tokens_fetched += 1
        _log.info(
            "token %s (jti=%s, %s) for %s scope=%s expires_in=%ds%s",
            token.fingerprint,
            token.jti,
            scheme,
            res.resource,
            " ".join(sorted(scopes)),
            expires_in,
            " with authorization_details" if details is not None else "",
        )
        return token

    # -- drivers -----------------------------------------------------------

    def _lock_sync(self, key: tuple[str, frozenset[str]]) -> threading.Lock:
        with self._locks_guard:
            return self._sync_locks.setdefault(key, threading.Lock())

    def _lock_async(self, key: tuple[str, frozenset[str]]) -> anyio.Lock:
        with self._locks_guard:
            lock = self._async_locks.get(key)
            if lock is None:
                lock = self._async_locks[key] = anyio.Lock()
            return lock

    def _client_kwargs(self) -> dict[str, Any]:
        return {"verify": self._ssl, "timeout": self._timeout, "follow_redirects": False, "trust_env": False}

    @staticmethod
    def _bounded(chunks: Iterable[bytes]) -> bytes:
        out = bytearray()
        for c in chunks:
            out += c
            if len(out) > MAX_BODY:
                raise TesseraError("response larger than the client reads")
        return bytes(out)

    def sync_auth_flow(self, request: httpx2.Request) -> Generator[httpx2.Request, httpx2.Response, None]:
        request.read()
        flow = self._flow(request)
        held: list[threading.Lock] = []
        client: httpx2.Client | None = None
        value: Any = None
        try:
            while True:
                try:
                    step = flow.send(value)
                except StopIteration:
                    return
                value = None
                if isinstance(step, httpx2.Request):
                    value = yield step
                elif isinstance(step, _Sleep):
                    time.sleep(step.seconds)
                elif isinstance(step, _Acquire):
                    lock = self._lock_sync(step.key)
                    lock.acquire()
                    held.append(lock)
                elif isinstance(step, _Release):
                    held.pop().release()
                else:
                    if client is None:
                        client = httpx2.Client(**self._client_kwargs())
                    try:
                        req = client.build_request(step.method, step.url, headers=step.headers, data=step.form)
                        r = client.send(req, stream=True)
                        try:
                            value = _Resp(r.status_code, r.headers, self._bounded(r.iter_bytes()))
                        finally:
                            r.close()
                    except httpx2.TransportError as e:
                        raise TesseraError(f"cannot reach {_clean(step.url)}: {type(e).__name__}") from e
        finally:
            while held:
                held.pop().release()
            if client is not None:
                client.close()
            flow.close()

    async def async_auth_flow(self, request: httpx2.Request) -> AsyncGenerator[httpx2.Request, httpx2.Response]:
        await request.aread()
        flow = self._flow(request)
        held: list[anyio.Lock] = []
        client: httpx2.AsyncClient | None = None
        value: Any = None
        try:
            while True:
                try:
                    step = flow.send(value)
                except StopIteration:
                    return
                value = None
                if isinstance(step, httpx2.Request):
                    value = yield step
                elif isinstance(step, _Sleep):
                    await anyio.sleep(step.seconds)
                elif isinstance(step, _Acquire):
                    lock = self._lock_async(step.key)
                    await lock.acquire()
                    held.append(lock)
                elif isinstance(step, _Release):
                    held.pop().release()
                else:
                    if client is None:
                        client = httpx2.AsyncClient(**self._client_kwargs())
                    try:
                        req = client.build_request(step.method, step.url, headers=step.headers, data=step.form)
                        r = await client.send(req, stream=True)
                        try:
                            body = bytearray()
                            async for c in r.aiter_bytes():
                                body += c
                                if len(body) > MAX_BODY:
                                    raise TesseraError("response larger than the client reads")
                            value = _Resp(r.status_code, r.headers, bytes(body))
                        finally:
                            await r.aclose()
                    except httpx2.TransportError as e:
                        raise TesseraError(f"cannot reach {_clean(step.url)}: {type(e).__name__}") from e
        finally:
            while held:
                held.pop().release()
            if client is not None:
                await client.aclose()
            flow.close()
