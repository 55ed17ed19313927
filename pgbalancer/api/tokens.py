"""API tokens: HS256 JWTs issued by POST /api/v1/auth/login and checked on every request.

A token carries ``sub`` (user name), ``role``, ``iat``, ``exp``, ``jti``, ``iss`` and ``aud``.
Verification pins the algorithm to HS256 (so ``alg: none`` and algorithm-confusion tokens fail),
checks the signature, requires every claim, and checks expiry, issuer and audience.

It must never: accept a token without a valid HS256 signature; log or return a token or the key;
read a clock when issuing (``now`` is passed in). Verification lets PyJWT read the clock for
``exp``, which is what it is there for.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any, Final

import jwt

from pgbalancer.api.users import Role

ALGORITHM: Final = "HS256"
_REQUIRED_CLAIMS: Final = ["sub", "role", "iat", "exp", "jti", "iss", "aud"]


class TokenRejected(Exception):
    """The token is not acceptable; the message says why in words safe to show the client."""


@dataclass(frozen=True)
class TokenSettings:
    key: bytes = field(repr=False)
    issuer: str
    audience: str
    ttl: int  # seconds


@dataclass(frozen=True)
class IssuedToken:
    token: str = field(repr=False)
    expires_in: int
    jti: str


@dataclass(frozen=True)
class TokenClaims:
    subject: str
    role: Role
    jti: str
    expires_at: int


def issue_token(
    settings: TokenSettings, user: str, role: Role, now: float, jti: str | None = None
) -> IssuedToken:
    issued_at = int(now)
    token_id = jti if jti is not None else secrets.token_urlsafe(16)
    claims: dict[str, Any] = {
        "sub": user,
        "role": str(role),
        "iat": issued_at,
        "exp": issued_at + settings.ttl,
        "jti": token_id,
        "iss": settings.issuer,
        "aud": settings.audience,
    }
    token = jwt.encode(claims, settings.key, algorithm=ALGORITHM, headers={"typ": "JWT"})
    return IssuedToken(token, settings.ttl, token_id)


def verify_token(settings: TokenSettings, token: str) -> TokenClaims:
    """The claims of a valid token; TokenRejected (with a short, safe reason) otherwise."""
    try:
        claims = jwt.decode(
            token,
            settings.key,
            algorithms=[ALGORITHM],
            audience=settings.audience,
            issuer=settings.issuer,
            options={"require": _REQUIRED_CLAIMS, "verify_signature": True},
        )
    except jwt.ExpiredSignatureError:
        raise TokenRejected("token expired; log in again") from None
    except jwt.InvalidAlgorithmError:
        raise TokenRejected(f"token algorithm not allowed (only {ALGORITHM})") from None
    except jwt.InvalidSignatureError:
        raise TokenRejected("token signature does not verify") from None
    except (jwt.InvalidAudienceError, jwt.InvalidIssuerError):
        raise TokenRejected("token was issued for another service (iss/aud)") from None
    except jwt.PyJWTError:
        raise TokenRejected("malformed or incomplete token") from None
    return _claims(claims)


def _claims(claims: dict[str, Any]) -> TokenClaims:
    subject, role, jti, expires_at = claims["sub"], claims["role"], claims["jti"], claims["exp"]
    if not isinstance(subject, str) or not isinstance(jti, str) or not isinstance(expires_at, int):
        raise TokenRejected("malformed or incomplete token")
    try:
        return TokenClaims(subject, Role(role), jti, expires_at)
    except ValueError:
        raise TokenRejected("malformed or incomplete token") from None
