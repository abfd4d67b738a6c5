"""Who may read and change what on the station page.

- Changes (threshold, feedback, reload) need the page password when web.host is not loopback (or
  web.require_password is "always"). The password comes from the environment, a file or a systemd credential,
  never from config.yaml, and is never logged or sent to a page.
- Reads need it too unless web.public_reads is true.
- Every change needs the session's CSRF token in the X-CSRF-Token header, and a browser request must come
  from the page's own origin (Origin and Sec-Fetch-Site). The Host header must be on an exact allow-list
  (HostAllowList), so a web site cannot reach the page through DNS rebinding.
- Anonymous sessions never push out logged-in ones; wrong passwords from one source lock it out for a while.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from edge.config.secrets import find_secret
from edge.login_throttle import LoginThrottle
from edge.config.web import WILDCARD_HOSTS, WebConfig, ip_literal

CREDENTIAL_NAME = "web_password"  # systemd LoadCredential= name
SESSION_COOKIE = "lineguard_session"
CSRF_HEADER = "x-csrf-token"
MAX_SESSIONS = 256  # anonymous ones; the oldest is forgotten first
MAX_LOGGED_IN = 64  # kept apart, so only another login can push one out
SESSION_IDLE_S = 12 * 3600.0
SAME_ORIGIN_FETCH = ("same-origin", "none")
LOOPBACK_V4 = ipaddress.ip_network("127.0.0.0/8")
LOOPBACK_V6 = ipaddress.ip_address("::1")


def resolve_web_password(web: WebConfig) -> str | None:
    """The page password: $<password_env>, then web.password_file, then $CREDENTIALS_DIRECTORY/web_password."""
    return find_secret(web.password_env, web.password_file, CREDENTIAL_NAME, "the web password file") or None


def check_web_password(web: WebConfig, password: str | None) -> str | None:
    """Why the page cannot start as configured, or None: a page that needs a password must have one."""
    if web.enabled and web.password_required and not password:
        return (f"web.host is {web.host} (or web.require_password is always) but no page password is set: put it "
                f"in ${web.password_env}, web.password_file or the systemd credential {CREDENTIAL_NAME}")
    return None


@dataclass
class Session:
    token: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    authenticated: bool = False
    seen_s: float = field(default_factory=time.monotonic)


class HostAllowList:
    """The Host names the page answers to: loopback literals (127.0.0.0/8, [::1]), `localhost`, web.host, and
    web.allowed_hosts. On a wildcard web.host any address literal passes too: a literal cannot be rebound."""

    def __init__(self, web: WebConfig) -> None:
        listed = [web.host.lower(), *web.allowed_hosts]
        self.names = {"localhost", *(name for name in listed if ip_literal(name) is None)}
        self.addresses = {LOOPBACK_V6, *(ip_literal(name) for name in listed if ip_literal(name) is not None)}
        self.any_literal = web.host in WILDCARD_HOSTS

    def allows(self, host_header: str) -> bool:
        name = _host_name(host_header)
        if name is None:
            return False
        if name in self.names:
            return True
        address = ip_literal(name)
        if address is None or (address.version == 6) != name.startswith("["):
            return False  # a DNS name not listed, or a literal written the wrong way ([v4], bare v6)
        return self.any_literal or address in self.addresses or (address.version == 4 and address in LOOPBACK_V4)


def _host_name(host_header: str) -> str | None:
    """The name of a Host header, lower case, without its port; None when it is not name[:port]."""
    header = host_header.lower()
    if header.startswith("["):
        end = header.find("]")
        if end < 0:
            return None
        name, rest = header[:end + 1], header[end + 1:]
    else:
        name, colon, port = header.partition(":")
        rest = colon + port
    if rest and not (rest[0] == ":" and rest[1:].isascii() and rest[1:].isdigit()):
        return None
    return name or None


class Guard:
    """Sessions, CSRF tokens and the checks every request goes through. Thread-safe."""

    def __init__(self, web: WebConfig, password: str | None) -> None:
        self.web = web
        self._password_digest = hashlib.sha256(password.encode()).digest() if password else None
        self._sessions: OrderedDict[str, Session] = OrderedDict()  # anonymous
        self._logged_in: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()
        self.hosts = HostAllowList(web)
        self.throttle = LoginThrottle()

    @property
    def password_required(self) -> bool:
        return self.web.password_required

    def session(self, token: str | None) -> tuple[str, Session]:
        """The session for a cookie value, or a new one (its token to set as the cookie)."""
        now = time.monotonic()
        with self._lock:
            table = self._logged_in if token in self._logged_in else self._sessions
            found = table.get(token) if token else None
            if found is None or now - found.seen_s > SESSION_IDLE_S:
                table.pop(token, None)
                table, found = self._sessions, Session()
                _add_bounded(table, found, MAX_SESSIONS)
            found.seen_s = now
            table.move_to_end(found.token)
            return found.token, found

    def may_read(self, session: Session) -> bool:
        return self.web.public_reads or not self.password_required or session.authenticated

    def may_change(self, session: Session) -> bool:
        return not self.password_required or session.authenticated

    def login(self, session: Session, password: str) -> bool:
        if self._password_digest is None:
            return not self.password_required
        ok = hmac.compare_digest(hashlib.sha256(password.encode()).digest(), self._password_digest)
        if ok and not session.authenticated:
            with self._lock:
                session.authenticated = True
                self._sessions.pop(session.token, None)
                _add_bounded(self._logged_in, session, MAX_LOGGED_IN)
        return ok

    def host_refusal(self, host_header: str) -> str | None:
        """A Host off the allow-list is refused: a rebinding DNS name pointing at this device is not the page."""
        if self.hosts.allows(host_header):
            return None
        return f"host {host_header[:100]!r} refused: not loopback, web.host or in web.allowed_hosts"

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


def _add_bounded(table: OrderedDict[str, Session], session: Session, limit: int) -> None:
    table[session.token] = session
    while len(table) > limit:
        table.popitem(last=False)
