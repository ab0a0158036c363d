"""The token request's polling rules, driven step by step (no network, no
sleeping): the flow is a generator that asks its driver for HTTP calls and
sleeps, so the test plays the broker."""

from __future__ import annotations

import json
from collections.abc import Generator
from typing import Any

import httpx2
import pytest

from tessera_client import ApprovalDenied, ApprovalExpired, ApprovalTimeout, DPoPKey, TesseraAuth, TokenRequestError
from tessera_client._auth import Resource, Token, _Http, _Resp, _Sleep

RES = Resource("https://mcp.example.com/mcp", "https://tessera.example", "https://tessera.example/token", ("tickets:read",), False)
CA = __file__  # any existing file path: never read as a CA here


def auth(**kw: Any) -> TesseraAuth:
    kw.setdefault("subject_token", "subject.jwt")
    kw.setdefault("issuer", "https://tessera.example")
    return TesseraAuth(**kw)


def answer(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> _Resp:
    return _Resp(status, httpx2.Headers(headers or {}), json.dumps(body).encode())


def granted(token_type: str = "Bearer") -> _Resp:
    return answer(200, {"access_token": "eyJhbGciOiJFUzI1NiJ9.eyJqdGkiOiJqLTEifQ.c2ln", "token_type": token_type, "expires_in": 300, "scope": "tickets:read"})


def play(gen: Generator[Any, Any, Token], answers: list[_Resp]) -> tuple[list[Any], Token]:
    """Runs the flow; returns its steps and the token."""
    steps: list[Any] = []
    value: Any = None
    answers = list(answers)
    while True:
        try:
            step = gen.send(value)
        except StopIteration as e:
            return steps, e.value
        steps.append(step)
        value = answers.pop(0) if isinstance(step, _Http) else None


def test_pending_then_granted_polls_at_the_interval_with_the_approval_id() -> None:
    a = auth()
    pending = answer(400, {"error": "authorization_pending", "approval_id": "ap-1", "interval": 3})
    steps, token = play(a._request_token(RES, frozenset({"tickets:read"}), None), [pending, pending, granted()])
    https = [s for s in steps if isinstance(s, _Http)]
    assert [s for s in steps if isinstance(s, _Sleep)] == [_Sleep(3.0), _Sleep(3.0)]
    assert "approval_id" not in (https[0].form or {})
    assert all((s.form or {}).get("approval_id") == "ap-1" for s in https[1:])
    assert all((s.form or {})["grant_type"] == "urn:ietf:params:oauth:grant-type:token-exchange" for s in https)
    assert (https[0].form or {})["resource"] == RES.resource
    assert token.jti == "j-1" and token.scheme == "Bearer"


def test_slow_down_adds_five_seconds_for_good() -> None:
    a = auth()
    steps, _ = play(
        a._request_token(RES, frozenset({"x"}), None),
        [
            answer(400, {"error": "authorization_pending", "approval_id": "ap", "interval": 2}),
            answer(400, {"error": "slow_down"}),
            answer(400, {"error": "authorization_pending", "approval_id": "ap"}),
            granted(),
        ],
    )
    assert [s.seconds for s in steps if isinstance(s, _Sleep)] == [2.0, 7.0, 7.0]


def test_rate_limited_honours_retry_after_within_bounds() -> None:
    a = auth()
    steps, _ = play(
        a._request_token(RES, frozenset({"x"}), None),
        [answer(429, {"error": "slow_down"}, {"Retry-After": "3"}), answer(429, {"error": "slow_down"}, {"Retry-After": "99999"}), granted()],
    )
    assert [s.seconds for s in steps if isinstance(s, _Sleep)] == [3.0, 60.0]


@pytest.mark.parametrize(("error", "exc"), [("access_denied", ApprovalDenied), ("expired_token", ApprovalExpired)])
def test_the_human_decided_or_nobody_did(error: str, exc: type[Exception]) -> None:
    a = auth()
    with pytest.raises(exc):
        play(a._request_token(RES, frozenset({"x"}), None), [answer(400, {"error": "authorization_pending", "approval_id": "ap"}), answer(400, {"error": error})])


def test_on_pending_once_and_max_wait() -> None:
    seen: list[str] = []
    a = auth(on_pending=seen.append, max_wait=10)
    pending = answer(400, {"error": "authorization_pending", "approval_id": "ap-9", "interval": 4})
    with pytest.raises(ApprovalTimeout) as e:
        play(a._request_token(RES, frozenset({"x"}), None), [pending, pending, pending, pending])
    assert seen == ["ap-9"] and e.value.approval_id == "ap-9"


def test_other_errors_are_typed_and_carry_no_token() -> None:
    a = auth(subject_token="secret.subject.token")
    with pytest.raises(TokenRequestError) as e:
        play(a._request_token(RES, frozenset({"x"}), None), [answer(400, {"error": "invalid_scope", "error_description": "scope not allowed\x1b[31m"})])
    assert e.value.error == "invalid_scope" and "\x1b" not in str(e.value)
    assert "secret.subject.token" not in str(e.value)
    with pytest.raises(TokenRequestError) as e:
        play(a._request_token(RES, frozenset({"x"}), None), [_Resp(502, httpx2.Headers(), b"<html>")])
    assert e.value.error == "http_502"


def test_malformed_grants_are_refused() -> None:
    a = auth()
    for body in (
        {"token_type": "Bearer", "expires_in": 60},
        {"access_token": "t\n", "token_type": "Bearer", "expires_in": 60},
        {"access_token": "t", "token_type": "MAC", "expires_in": 60},
        {"access_token": "t", "token_type": "Bearer", "expires_in": True},
        {"access_token": "t", "token_type": "Bearer", "expires_in": 0},
        {"access_token": "t", "token_type": "DPoP", "expires_in": 60},  # not asked for
    ):
        with pytest.raises(TokenRequestError):
            play(a._request_token(RES, frozenset({"x"}), None), [answer(200, body)])


def test_dpop_proof_per_request_and_the_nonce_retry() -> None:
    key = DPoPKey()
    a = auth(dpop=key)
    steps, token = play(
        a._request_token(RES, frozenset({"x"}), None),
        [answer(400, {"error": "use_dpop_nonce"}, {"DPoP-Nonce": "n-1"}), granted("DPoP")],
    )
    https = [s for s in steps if isinstance(s, _Http)]
    proofs = [s.headers["DPoP"] for s in https]
    assert len(set(proofs)) == 2, "a fresh proof each time"
    claims = [json.loads(__import__("base64").urlsafe_b64decode(p.split(".")[1] + "==")) for p in proofs]
    assert "nonce" not in claims[0] and claims[1]["nonce"] == "n-1"
    assert all(c["htm"] == "POST" and c["htu"] == RES.token_endpoint for c in claims)
    assert token.scheme == "DPoP"


def test_client_credentials_when_the_certificate_is_the_subject(tmp_path: Any) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import datetime

    k = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "agent")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(k.public_key()).serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1)).sign(k, hashes.SHA256())
    (tmp_path / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "k.pem").write_bytes(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    a = TesseraAuth(cert=tmp_path / "c.pem", key=tmp_path / "k.pem", issuer="https://tessera.example", task="t-1", expires_in=120)
    steps, _ = play(a._request_token(RES, frozenset({"b", "a"}), [{"type": "x"}]), [granted()])
    form = steps[0].form
    assert form == {"grant_type": "client_credentials", "resource": RES.resource, "scope": "a b", "task": "t-1", "expires_in": "120", "authorization_details": '[{"type":"x"}]'}


def test_construction_refuses_unsafe_or_impossible_setups() -> None:
    with pytest.raises(ValueError):
        TesseraAuth(issuer="https://tessera.example")  # no identity
    with pytest.raises(ValueError):
        TesseraAuth(subject_token="t")  # nothing pins the authorization server
    with pytest.raises(ValueError):
        TesseraAuth(subject_token="t", issuer="http://tessera.example")
    with pytest.raises(ValueError):
        TesseraAuth(cert=CA, key=CA, issuer="https://tessera.example", dpop=True)
