"""Who may use the console: the AdminService rules, with a browser session and CSRF tokens.

- With AIGW_ADMIN_TOKEN set, an operator signs in with that token (sent in a POST body, never a
  URL) and gets a session cookie: a random id (256 bits) that names a session held here, in
  memory — HttpOnly, SameSite=Strict, expiring after `SESSION_SECONDS`.
- With no token, only loopback callers may use the console, as for AdminService; they get a
  session without signing in, so that every state-changing request still carries a CSRF token
  (a page on another site, open in the operator's browser, must not change the config).

Every session has its own CSRF token; each POST must carry it as the `csrf` field, and a POST
whose Origin header names another origin is refused as well. Refusals are 403 and change
nothing. Session ids and tokens never reach a log.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass

from gateway.auth import ADMIN_TOKEN_NAME, is_loopback_peer

__all__ = ["COOKIE", "SESSION_SECONDS", "Session", "Sessions", "is_loopback_address"]

COOKIE = "aigw_console"
SESSION_SECONDS = 8 * 3600
MAX_SESSIONS = 1000


@dataclass(slots=True)
class Session:
    csrf: str
    expires: float
    # Who acts, for the config history: the token's name, or the loopback address.
    principal: str


def is_loopback_address(ip: str) -> bool:
    """The AdminService rule (gateway/auth.py) for an HTTP peer's address."""
    host = f"[{ip}]" if ":" in ip else ip
    return is_loopback_peer(f"{'ipv6' if ':' in ip else 'ipv4'}:{host}:0")


class Sessions:
    def __init__(self, admin_token: str, *, lifetime: float = SESSION_SECONDS) -> None:
        self._token = admin_token.encode()
        self.lifetime = lifetime
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    @property
    def token_required(self) -> bool:
        return bool(self._token)

    def token_matches(self, given: str) -> bool:
        return bool(self._token) and hmac.compare_digest(given.encode(), self._token)

    def create(self, principal: str = ADMIN_TOKEN_NAME) -> tuple[str, Session]:
        while len(self._sessions) >= MAX_SESSIONS:
            self._sessions.popitem(last=False)
        sid = secrets.token_urlsafe(32)
        session = Session(
            csrf=secrets.token_urlsafe(32),
            expires=time.monotonic() + self.lifetime,
            principal=principal,
        )
        self._sessions[sid] = session
        return sid, session

    def get(self, sid: str | None) -> Session | None:
        if not sid:
            return None
        session = self._sessions.get(sid)
        if session is None:
            return None
        if session.expires <= time.monotonic():
            del self._sessions[sid]
            return None
        return session

    def end(self, sid: str | None) -> None:
        if sid:
            self._sessions.pop(sid, None)


def csrf_matches(session: Session, given: str) -> bool:
    return bool(given) and hmac.compare_digest(given.encode(), session.csrf.encode())
