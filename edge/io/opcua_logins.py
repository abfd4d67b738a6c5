"""Who may open a session on the OPC UA server: the configured user and password, trusted client certificates,
and anonymous sessions only where the config allows them. Never an admin: clients read and call, they do not write.

Wrong passwords in a row from one peer address lock it out for a while (edge.login_throttle, the page's rule),
counted before they are checked, so parallel guesses wait too. asyncua does not tell its user manager who is
asking, so each session's activation is wrapped to say so (follow_peers).
"""
from __future__ import annotations

import contextvars
import hashlib
import hmac
import logging

from asyncua.crypto.permission_rules import User, UserRole

from edge.config.opcua import OpcuaConfig
from edge.log_limit import LogLimit, held_back
from edge.login_throttle import LoginThrottle

logger = logging.getLogger("lineguard")

LOCKOUT_WARNING_EVERY_S = 60.0
UNKNOWN_PEER = "unknown peer"  # when asyncua's sessions change shape: then every peer shares one count
PEER: contextvars.ContextVar[str] = contextvars.ContextVar("opcua_peer", default=UNKNOWN_PEER)


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


class Logins:
    """asyncua's user manager (get_user)."""

    def __init__(self, config: OpcuaConfig, password: str | None, trusted: list[bytes]) -> None:
        self._user = _digest(config.username) if config.username is not None and password else None
        self._password = _digest(password) if password else None
        self._trusted = set(trusted)
        self._anonymous = config.anonymous_allowed
        self.throttle = LoginThrottle()
        self._lockout_log = LogLimit(LOCKOUT_WARNING_EVERY_S)

    def get_user(self, iserver, username=None, password=None, certificate=None):  # noqa: ANN001 - asyncua's
        if username is not None:
            return self._password_login(username, password)
        if certificate is not None and bytes(certificate) in self._trusted:
            return User(role=UserRole.User, name="certificate")
        return User(role=UserRole.User) if self._anonymous else None

    def _password_login(self, username: str, password) -> User | None:
        if self._user is None or not isinstance(password, str):
            return None
        peer = PEER.get()
        wait_s = self.throttle.admit(peer)  # counted before it is checked
        if wait_s is not None:
            if events := self._lockout_log.due():  # a flood of guesses must not flood the journal
                logger.warning("opcua: login from %s refused without a check: too many wrong passwords, %.0f s "
                               "to wait%s", peer, wait_s, held_back(events, "logins refused, from any address,"))
            return None
        name_ok = hmac.compare_digest(_digest(username), self._user)
        if hmac.compare_digest(_digest(password), self._password) and name_ok:
            self.throttle.succeeded(peer)
            return User(role=UserRole.User, name=username)
        logger.warning("opcua: wrong user or password from %s", peer)
        return None


def follow_peers(iserver) -> None:
    """Have every session asyncua creates set PEER to its client's address while it is activated (the user
    manager is called inside activate_session, on the server's loop, without awaiting)."""
    create_session = iserver.create_session

    def create_and_follow(name, *args, **kwargs):
        session = create_session(name, *args, **kwargs)
        peer = str(name[0]) if isinstance(name, tuple) and name else UNKNOWN_PEER  # name: the socket's peername
        activate = session.activate_session

        def activate_as_peer(*call_args, **call_kwargs):
            token = PEER.set(peer)
            try:
                return activate(*call_args, **call_kwargs)
            finally:
                PEER.reset(token)

        session.activate_session = activate_as_peer
        return session

    iserver.create_session = create_and_follow
