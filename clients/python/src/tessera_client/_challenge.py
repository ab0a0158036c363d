"""`WWW-Authenticate` parsing (RFC 9110 §11.6.1, RFC 6750 §3, RFC 9728 §5.1)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

# A header longer than this is not parsed at all (a hostile server's header
# costs nothing but a skipped challenge).
MAX_HEADER_LEN = 8192

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TOKEN68 = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


@dataclass(frozen=True)
class Challenge:
    """One challenge: its scheme (lower case) and its parameters (names lower case)."""

    scheme: str
    params: dict[str, str] = field(default_factory=dict)

    @property
    def error(self) -> str | None:
        return self.params.get("error")

    @property
    def scope(self) -> frozenset[str]:
        """The `scope` parameter as a set (empty when absent)."""
        return frozenset(self.params.get("scope", "").split())

    @property
    def resource_metadata(self) -> str | None:
        return self.params.get("resource_metadata")


def _skip_ws(s: str, i: int) -> int:
    while i < len(s) and s[i] in " \t":
        i += 1
    return i


def _quoted(s: str, i: int) -> tuple[str, int] | None:
    """Parses a quoted-string starting at `s[i] == '"'`; returns (value, end)."""
    out: list[str] = []
    i += 1
    while i < len(s):
        c = s[i]
        if c == "\\":
            if i + 1 >= len(s):
                return None
            out.append(s[i + 1])
            i += 2
        elif c == '"':
            return "".join(out), i + 1
        else:
            out.append(c)
            i += 1
    return None


def _parse_one(s: str) -> list[Challenge]:
    challenges: list[Challenge] = []
    current: Challenge | None = None
    i = 0
    n = len(s)
    while i < n:
        i = _skip_ws(s, i)
        if i < n and s[i] == ",":
            i += 1
            continue
        if i >= n:
            break
        m = _TOKEN.match(s, i)
        if m is None:
            break  # malformed from here on: keep what was parsed
        name = m.group()
        j = _skip_ws(s, m.end())
        if current is not None and j < n and s[j] == "=":
            # An auth-param: name = token / quoted-string.
            k = _skip_ws(s, j + 1)
            if k < n and s[k] == '"':
                q = _quoted(s, k)
                if q is None:
                    break
                value, i = q
            else:
                v = _TOKEN.match(s, k)
                if v is None:
                    break
                value, i = v.group(), v.end()
            # RFC 6750 §3: each attribute at most once; the first one counts.
            current.params.setdefault(name.lower(), value)
            continue
        # A new challenge: the scheme, maybe followed by a token68.
        current = Challenge(scheme=name.lower())
        challenges.append(current)
        i = j
        t = _TOKEN68.match(s, i)
        if t is not None:
            after = _skip_ws(s, t.end())
            if after >= n or s[after] == ",":
                # token68 (not used by Bearer/DPoP): kept under its own name.
                current.params.setdefault("token68", t.group())
                i = after
    return challenges


def parse_www_authenticate(values: Iterable[str]) -> list[Challenge]:
    """Every challenge in the given `WWW-Authenticate` header values.

    >>> c = parse_www_authenticate(['Bearer resource_metadata="https://r/.well-known/oauth-protected-resource"'])
    >>> c[0].scheme, c[0].resource_metadata
    ('bearer', 'https://r/.well-known/oauth-protected-resource')
    """
    out: list[Challenge] = []
    for v in values:
        if len(v) > MAX_HEADER_LEN:
            continue
        out.extend(_parse_one(v))
    return out


def find_challenge(challenges: Iterable[Challenge], schemes: Iterable[str] = ("bearer", "dpop")) -> Challenge | None:
    """The first challenge of one of `schemes` (in the server's order)."""
    wanted = {s.lower() for s in schemes}
    for c in challenges:
        if c.scheme in wanted:
            return c
    return None
