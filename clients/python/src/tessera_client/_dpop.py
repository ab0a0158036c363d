"""DPoP proofs (RFC 9449) with an ES256 key, one per request."""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _json(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def htu(url: str) -> str:
    """The `htu` of a request URL: without query and fragment (RFC 9449 §4.2)."""
    return url.split("#", 1)[0].split("?", 1)[0]


def access_token_hash(token: str) -> str:
    """`ath`: base64url SHA-256 of the ASCII access token."""
    return b64url(hashlib.sha256(token.encode("ascii")).digest())


class DPoPKey:
    """A P-256 key that signs DPoP proofs. Its private half never leaves it
    (no `__repr__` shows it)."""

    def __init__(self, private_key: ec.EllipticCurvePrivateKey | None = None) -> None:
        key = private_key if private_key is not None else ec.generate_private_key(ec.SECP256R1())
        if not isinstance(key.curve, ec.SECP256R1):
            raise ValueError("DPoP keys are P-256 (ES256)")
        self._key = key
        nums = key.public_key().public_numbers()
        self.public_jwk: dict[str, str] = {
            "kty": "EC",
            "crv": "P-256",
            "x": b64url(nums.x.to_bytes(32, "big")),
            "y": b64url(nums.y.to_bytes(32, "big")),
        }
        # RFC 7638: the required members, lexicographic order, no spaces.
        self.thumbprint = b64url(hashlib.sha256(_json(self.public_jwk)).digest())

    @classmethod
    def from_pem(cls, path: str | Path) -> DPoPKey:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("a DPoP key file must hold an EC P-256 private key")
        return cls(key)

    def __repr__(self) -> str:
        return f"DPoPKey(jkt={self.thumbprint})"

    def proof(
        self,
        method: str,
        url: str,
        *,
        access_token: str | None = None,
        nonce: str | None = None,
        now: int | None = None,
    ) -> str:
        """A fresh proof for one request (new `jti` every call)."""
        header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": self.public_jwk}
        claims: dict[str, object] = {
            "jti": str(uuid.uuid4()),
            "htm": method.upper(),
            "htu": htu(url),
            "iat": int(time.time()) if now is None else now,
        }
        if access_token is not None:
            claims["ath"] = access_token_hash(access_token)
        if nonce is not None:
            claims["nonce"] = nonce
        signing_input = b64url(_json(header)) + "." + b64url(_json(claims))
        der = self._key.sign(signing_input.encode("ascii"), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return signing_input + "." + b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))
