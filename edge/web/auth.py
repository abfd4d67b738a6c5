"""Who may read and change what on the station page.

- Changes (threshold, feedback, reload) need the page password when web.host is not loopback (or
  web.require_password is "always"). The password comes from the environment, a file or a systemd credential,
  never from config.yaml, and is never logged or sent to a page.
- Reads need it too unless web.public_reads is true.
- Every change needs the session's CSRF token in the X-CSRF-Token header, and a browser request must come
  from the page's own origin (Origin and Sec-Fetch-Site). On loopback the Host header must name loopback,
  so a web site cannot reach the page through DNS rebinding.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from edge.config.secrets import read_secret
from edge.config.web import LOOPBACK_HOSTS, WebConfig

CREDENTIAL_NAME = "web_password"  # systemd LoadCredential= name
SESSION_COOKIE = "lineguard_session"
CSRF_HEADER = "x-csrf-token"
MAX_SESSIONS = 256  # the oldest is forgotten first
SESSION_IDLE_S = 12 * 3600.0
SAME_ORIGIN_FETCH = ("same-origin", "none")


def resolve_web_password(web: WebConfig) -> str | None:
    """The page password: $<password_env>, then web.password_file, then $CREDENTIALS_DIRECTORY/web_password."""
    from_env = os.environ.get(web.password_env)
    if from_env:
        return from_env
    path, credentials = web.password_file, os.environ.get("CREDENTIALS_DIRECTORY")
    if path is None and credentials and (Path(credentials) / CREDENTIAL_NAME).exists():
        path = Path(credentials) / CREDENTIAL_NAME  # there but unreadable is an error, not "no password"
    return (read_secret(path, "the web password file") or None) if path is not None else None


def check_web_password(web: WebConfig, password: str | None) -> str | None:
    """Why the page cannot start as configured, or None: a page that needs a password must have one."""
    if web.enabled and web.password_required and not password:
        return (f"web.host is {web.host} (or web.require_password is always) but no page password is set: put it "
                f"in ${web.password_env}, web.password_file or the systemd credential {CREDENTIAL_NAME}")
    return None


@dataclass
class Session:
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    authenticated: bool = False
    seen_s: float = field(default_factory=time.monotonic)


class Guard:
    """Sessions, CSRF tokens and the checks every request goes through. Thread-safe."""

    def __init__(self, web: WebConfig, password: str | None) -> None:
        self.web = web
        self._password_digest = hashlib.sha256(password.encode()).digest() if password else None
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def password_required(self) -> bool:
        return self.web.password_required

    def session(self, token: str | None) -> tuple[str, Session]:
        """The session for a cookie value, or a new one (its token to set as the cookie)."""
        now = time.monotonic()
        with self._lock:
            found = self._sessions.get(token) if token else None
            if found is None or now - found.seen_s > SESSION_IDLE_S:
                token, found = secrets.token_urlsafe(32), Session()
                self._sessions[token] = found
                while len(self._sessions) > MAX_SESSIONS:
                    self._sessions.popitem(last=False)
            found.seen_s = now
            self._sessions.move_to_end(token)
            return token, found

    def may_read(self, session: Session) -> bool:
        return self.web.public_reads or not self.password_required or session.authenticated

    def may_change(self, session: Session) -> bool:
        return not self.password_required or session.authenticated

    def login(self, session: Session, password: str) -> bool:
        if self._password_digest is None:
            return not self.password_required
        ok = hmac.compare_digest(hashlib.sha256(password.encode()).digest(), self._password_digest)
        session.authenticated = session.authenticated or ok
        return ok

    def host_refusal(self, host_header: str) -> str | None:
        """On loopback, only loopback names: a rebinding DNS name pointing at 127.0.0.1 is refused."""
        if not self.web.loopback:
            return None
        name = host_header.rsplit(":", 1)[0] if not host_header.endswith("]") else host_header
        name = name.strip("[]")
        return None if name in LOOPBACK_HOSTS or name.startswith("127.") else f"host {host_header!r} refused"

    def change_refusal(self, headers, scheme: str, session: Session) -> str | None:
        """Why a state-changing request is refused (CSRF token, origin), or None. The password is checked apart."""
        origin = headers.get("origin")
        if origin is not None and origin != f"{scheme}://{headers.get('host', '')}":
            return "request from another origin refused"
        if headers.get("sec-fetch-site", "same-origin") not in SAME_ORIGIN_FETCH:
            return "cross-site request refused"
        token = headers.get(CSRF_HEADER, "")
        if not token or not hmac.compare_digest(token.encode(), session.csrf.encode()):
            return "missing or wrong CSRF token (X-CSRF-Token)"
        return None
