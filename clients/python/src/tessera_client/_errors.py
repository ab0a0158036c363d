"""Typed errors. None of them ever carries a token: only the OAuth error
code, the broker's generic description and where it happened."""

from __future__ import annotations


def _clean(text: object, limit: int = 200) -> str:
    """Printable, bounded text from a server (for messages and logs)."""
    s = "".join(c if c.isprintable() else "?" for c in str(text))
    return s if len(s) <= limit else s[:limit] + "…"


class TesseraError(Exception):
    """Base class of every error this package raises."""


class DiscoveryError(TesseraError):
    """Protected resource metadata (RFC 9728) or authorization server
    metadata (RFC 8414) is missing, malformed, or not to be trusted."""


class TokenRequestError(TesseraError):
    """The token endpoint refused the request (RFC 6749 §5.2 error)."""

    def __init__(self, status: int, error: str, description: str | None = None) -> None:
        self.status = status
        self.error = _clean(error, 64)
        self.description = _clean(description) if description else None
        msg = f"token endpoint answered {status} {self.error}"
        if self.description:
            msg += f": {self.description}"
        super().__init__(msg)


class ApprovalDenied(TokenRequestError):
    """A human denied the pending approval (`access_denied`)."""


class ApprovalExpired(TokenRequestError):
    """The pending approval expired before anyone decided (`expired_token`)."""


class ApprovalTimeout(TesseraError):
    """Still `authorization_pending` when the client's own `max_wait` ran out."""

    def __init__(self, approval_id: str, waited: float) -> None:
        self.approval_id = approval_id
        super().__init__(f"approval {approval_id} still pending after {waited:.0f}s")
