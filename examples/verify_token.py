#!/usr/bin/env python3
"""Verify a Tessera access token in a Python resource server (PyJWT).

    python3 examples/verify_token.py --jwks jwks.json --issuer ISS \
        --audience AUD [--client-cert client.pem] < token

Every check a resource server must make, in order: the header's `typ` is
`at+jwt` (RFC 9068: not an ID token or another JWT), `alg` is on a short
allowlist, the `kid` names a key of the broker's JWKS, the signature, the
exact `iss`, the `aud` (Tessera issues one audience), `exp`/`nbf`/`iat`
with a small leeway, and the binding: a token with `cnf.x5t#S256` is only
valid over the TLS client certificate it was issued to (RFC 8705), and a
token with `cnf.jkt` only with a DPoP proof of that key (RFC 9449), which
this example does not accept. Exit 0 printing the claims, or 1 and why.
"""
import argparse
import base64
import hashlib
import json
import sys

import jwt  # PyJWT, with the `cryptography` extra
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

ALGORITHMS = ["ES256", "EdDSA"]  # what Tessera signs with (RS256 only if configured)
LEEWAY_SECONDS = 30


def refuse(reason):
    print(f"refused: {reason}", file=sys.stderr)
    sys.exit(1)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--jwks", required=True, help="the broker's /jwks.json, as fetched")
    p.add_argument("--issuer", required=True)
    p.add_argument("--audience", required=True, help="this resource server")
    p.add_argument("--client-cert", help="PEM of the TLS client certificate of the request")
    a = p.parse_args()
    token = sys.stdin.read().strip()

    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as e:
        refuse(f"malformed: {e}")
    if str(header.get("typ", "")).lower() not in ("at+jwt", "application/at+jwt"):
        refuse("typ is not at+jwt: not a Tessera access token")
    if header.get("alg") not in ALGORITHMS:
        refuse("algorithm not allowed")
    keys = {k["kid"]: k for k in json.load(open(a.jwks))["keys"] if "kid" in k}
    jwk = keys.get(header.get("kid"))
    if jwk is None:
        refuse("unknown kid: refetch the JWKS (rate-limited) before refusing")
    key = jwt.PyJWK(jwk).key
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=ALGORITHMS,
            issuer=a.issuer,
            audience=a.audience,
            leeway=LEEWAY_SECONDS,
            options={"require": ["iss", "sub", "aud", "exp", "iat", "jti"]},
        )
    except jwt.PyJWTError as e:
        refuse(f"{type(e).__name__}: {e}")

    cnf = claims.get("cnf") or {}
    if "x5t#S256" in cnf:
        if not a.client_cert:
            refuse("cnf: the token is bound to a client certificate and none was presented")
        der = x509.load_pem_x509_certificate(open(a.client_cert, "rb").read()).public_bytes(Encoding.DER)
        thumb = base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()
        if thumb != cnf["x5t#S256"]:
            refuse("cnf: the presented certificate is not the one the token is bound to")
    if "jkt" in cnf:
        refuse("cnf: a DPoP-bound token needs a DPoP proof of its key")
    print(json.dumps(claims, sort_keys=True))


if __name__ == "__main__":
    main()
