"""The station page fails closed under hostile or careless clients: a real daemon, real sockets, small limits set
in its config so the limits are reached quickly. Hosts outside the allow-list, slow or silent clients, huge or
unbounded bodies, more live viewers than allowed, anonymous floods and parallel password guessing."""
from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator

import httpx
import pytest

from edge.config.errors import ConfigError
from edge.config.load import parse_config
from edge.login_throttle import FREE_ATTEMPTS
from tests.test_station_page import STARTED, page_config, poll, start_daemon

PASSWORD = "correct horse battery staple"
LIMITS = {"read_timeout_s": 1.0, "max_connections": 8, "max_live_viewers": 3, "allowed_hosts": ["station.example"],
          "require_password": "always", "public_reads": True}
MB = 1024 * 1024


class Page:
    def __init__(self, daemon, url: str) -> None:
        self.daemon, self.url = daemon, url
        self.port = int(url.rstrip("/").rsplit(":", 1)[1])

    @contextlib.contextmanager
    def client(self, login: bool = False) -> Iterator[httpx.Client]:
        with httpx.Client(base_url=self.url, timeout=20) as client:
            if login:
                csrf = client.get("api/session").json()["csrf"]
                answer = client.post("api/login", json={"password": PASSWORD}, headers={"X-CSRF-Token": csrf})
                assert answer.status_code == 200, answer.text
            yield client

    def connect(self, timeout_s: float = 20.0) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout_s)

    def rss_kb(self) -> int:
        status = open(f"/proc/{self.daemon.process.pid}/status").read()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.daemon.process.pid}/fd"))


def make_page(tmp_path, **web) -> Page:
    config, url = page_config(tmp_path, None, source={"fps": 4, "loop": True}, mqtt={"enabled": False}, web=web)
    return Page(start_daemon(config, url, env={"LINEGUARD_WEB_PASSWORD": PASSWORD}), url)


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    started = make_page(tmp_path_factory.mktemp("page"), **LIMITS)
    yield started
    while STARTED:
        STARTED.pop().kill()


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (socket timeout: it never did)."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def read_response(sock: socket.socket) -> bytes:
    """One response (head and Content-Length body); what came before a close if the page closed early."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.lower().split(b"\r\n")
                   if line.startswith(b"content-length:")), None)
    while length is not None and len(body) < length and (chunk := sock.recv(65536)):
        body += chunk
    return head + b"\r\n\r\n" + body


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


# -- 1. Host allow-list -----------------------------------------------------------------------------------------


REFUSED_HOSTS = ("127.evil.example", "127.0.0.1.nip.io", "localhost.evil.example", "127.1", "evil.example",
                 "[::ffff:127.0.0.1]", "")
ALLOWED_HOSTS = ("127.0.0.1", "127.0.0.2", "localhost", "LOCALHOST", "[::1]", "station.example")


def test_only_loopback_literals_the_bind_address_and_listed_names_pass_the_host_check(page):
    with page.client(login=True) as client:
        csrf = client.get("api/session").json()["csrf"]
        for name in REFUSED_HOSTS:
            host = f"{name}:{page.port}" if name else ""
            headers = {"Host": host, "Origin": f"http://{host}", "X-CSRF-Token": csrf}
            answer = client.post("api/threshold", json={"threshold": 30.0}, headers=headers)
            assert answer.status_code == 421, (name, answer.text)
            assert client.get("api/session", headers={"Host": host}).status_code == 421, name
        assert client.get("api/state").json()["threshold"] != 30.0
        for name in ALLOWED_HOSTS:
            assert client.get("api/session", headers={"Host": f"{name}:{page.port}"}).status_code == 200, name
            assert client.get("api/session", headers={"Host": name}).status_code == 200, name


def test_a_wildcard_bind_takes_any_address_literal_but_only_listed_names():
    from edge.config.web import WebConfig
    from edge.web.auth import HostAllowList

    wildcard = HostAllowList(WebConfig(host="0.0.0.0", allowed_hosts=["station7.plant.example"]))
    assert all(wildcard.allows(h) for h in ("192.168.4.20:8080", "[fe80::1]", "station7.plant.example:8080"))
    assert not any(wildcard.allows(h) for h in ("station8.plant.example", "192.168.4.20.nip.io", "fe80::1"))
    listed = HostAllowList(WebConfig(host="192.168.4.20", allowed_hosts=["fd00::7"]))
    assert listed.allows("192.168.4.20:8080") and listed.allows("[FD00::7]:8080") and listed.allows("127.0.0.1")
    assert not listed.allows("192.168.4.21") and not listed.allows("[fd00::8]")


@pytest.mark.parametrize("hosts, message", [
    ("['*']", "web.allowed_hosts.0: '*' is not a host name"),
    ("[station.example:8080]", "web.allowed_hosts.0: 'station.example:8080' is not a host name"),
    ("[ok.example, 'http://x']", "web.allowed_hosts.1: 'http://x' is not a host name"),
])
def test_allowed_hosts_are_plain_names_with_line_numbers(hosts, message):
    with pytest.raises(ConfigError) as info:
        parse_config(f"source:\n  path: frames\nweb:\n  allowed_hosts: {hosts}\n")
    assert info.value.errors[0].startswith(f"config.yaml:4: {message}"), info.value.errors


# -- 2. slow clients ----------------------------------------------------------------------------------------------


SLOW_REQUESTS = (b"", b"GET /api/state HTTP/1.1\r\nHost: 127.0.0.1\r\n",
                 b"POST /api/login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{\"pass")


def test_silent_and_slow_clients_are_closed_and_cannot_crowd_out_the_page(page):
    fds_before = page.open_fds()
    slow = []
    for number in range(3 * LIMITS["max_connections"]):
        sock = page.connect()
        sock.sendall(SLOW_REQUESTS[number % len(SLOW_REQUESTS)])
        slow.append(sock)
    try:
        with page.client() as client:  # while more slow sockets are open than the page takes connections
            assert client.get("api/state").status_code == 200
        assert page.open_fds() <= fds_before + LIMITS["max_connections"] + 4
        for sock in slow:  # each is closed by the page: header and body reads time out
            answer = read_until_closed(sock)
            assert status_of(answer) in (0, 408), answer[:200]
    finally:
        for sock in slow:
            sock.close()
    assert "Traceback" not in page.daemon.log()


# -- 3. request bodies --------------------------------------------------------------------------------------------


def post_head(path: str, *headers: str) -> bytes:
    return "\r\n".join([f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json",
                        *headers, "", ""]).encode()


def stream_then_answer(page: Page, head: bytes, body_mb: int) -> bytes:
    """Send ``head`` and up to ``body_mb`` MB of body (in chunked framing when the head says so) while reading
    what the page answers, as curl does."""
    chunk = b"%x\r\n%s\r\n" % (MB, b"x" * MB) if b"chunked" in head else b"x" * MB
    with page.connect() as sock:
        answer: list[bytes] = []
        reader = threading.Thread(target=lambda: answer.append(read_until_closed(sock)))
        sock.sendall(head)
        reader.start()
        try:
            for _ in range(body_mb):
                sock.sendall(chunk)
        except OSError:
            pass  # refused and closed: the rest is never read
        reader.join(30)
        return answer[0] if answer else b""


@pytest.mark.parametrize("head, status", [
    (post_head("/api/login", f"Content-Length: {600 * MB}"), 413),
    (post_head("/api/login", "Transfer-Encoding: chunked"), 411),
])
def test_a_huge_or_unbounded_body_is_refused_before_it_is_read(page, head, status):
    rss_before = page.rss_kb()
    answer = stream_then_answer(page, head, 32)
    assert status_of(answer) == status, answer[:300]
    assert b"Content-Length" in answer
    assert page.rss_kb() - rss_before < 8 * 1024, "the body was kept in memory"


def test_a_post_without_a_length_is_refused_and_a_small_one_still_works(page):
    with page.connect() as sock:
        sock.sendall(post_head("/api/threshold/reset"))
        assert status_of(read_until_closed(sock)) == 411
    with page.client() as client:
        csrf = client.get("api/session").json()["csrf"]
        answer = client.post("api/login", content=b"{" + b" " * 5000 + b"}", headers={"X-CSRF-Token": csrf})
        assert answer.status_code == 413 and "4096" in answer.json()["reason"]
        assert client.post("api/login", json={"password": PASSWORD}, headers={"X-CSRF-Token": csrf}).status_code == 200


# -- 4. live viewers ----------------------------------------------------------------------------------------------


def open_viewer(page: Page) -> tuple[socket.socket, bytes]:
    """A live viewer's connection and the head of the answer (with the body, when it is a refusal)."""
    sock = page.connect()
    sock.sendall(b"GET /api/live/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head and (chunk := sock.recv(4096)):
        head += chunk
    return sock, (head if status_of(head) == 200 else head + b"|" + read_response_rest(sock, head))


def read_response_rest(sock: socket.socket, head: bytes) -> bytes:
    body = head.partition(b"\r\n\r\n")[2]
    while not body.endswith(b"}") and (chunk := sock.recv(4096)):
        body += chunk
    return body


def test_more_live_viewers_than_allowed_get_503_and_the_api_still_answers(page):
    cap = LIMITS["max_live_viewers"]
    viewers = []
    try:
        for _ in range(cap):
            sock, head = open_viewer(page)
            viewers.append(sock)
            assert status_of(head) == 200, head
        for _ in range(3):
            sock, answer = open_viewer(page)
            sock.close()
            assert status_of(answer) == 503 and b"web.max_live_viewers" in answer, answer
        with page.client(login=True) as client:
            assert client.get("api/state").json()["inspecting"] is True
            csrf = client.get("api/session").json()["csrf"]
            reply = client.post("api/threshold", json={"threshold": 31.0}, headers={"X-CSRF-Token": csrf})
            assert reply.status_code == 200 and client.get("api/state").json()["threshold"] == 31.0
            client.post("api/threshold/reset", json={}, headers={"X-CSRF-Token": csrf})
        viewers.pop().close()  # a closed viewer frees its place
        assert poll(lambda: status_of(open_viewer_and_keep(page, viewers)) == 200, 20)
    finally:
        for sock in viewers:
            sock.close()


def open_viewer_and_keep(page: Page, viewers: list) -> bytes:
    sock, head = open_viewer(page)
    (viewers.append if status_of(head) == 200 else lambda s: s.close())(sock)
    return head


# -- 5. sessions and password guessing ----------------------------------------------------------------------------


def test_anonymous_requests_never_evict_a_logged_in_session(page):
    with page.client(login=True) as operator:
        with page.connect() as sock:  # one connection, no cookie: each request makes a new anonymous session
            for _ in range(300):
                sock.sendall(b"GET /api/session HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                assert status_of(read_response(sock)) == 200
        assert operator.get("api/session").json()["authenticated"] is True


def test_parallel_wrong_passwords_are_evaluated_a_few_times_then_refused_with_retry_after(tmp_path):
    guessed = make_page(tmp_path)
    clients = [httpx.Client(base_url=guessed.url, timeout=60) for _ in range(20)]
    tokens = [client.get("api/session").json()["csrf"] for client in clients]
    answers: list = [None] * len(clients)

    def guess(number: int) -> None:
        answers[number] = clients[number].post("api/login", json={"password": f"guess-{number}"},
                                               headers={"X-CSRF-Token": tokens[number]})
    threads = [threading.Thread(target=guess, args=(n,)) for n in range(len(clients))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    statuses = [answer.status_code for answer in answers]
    assert statuses.count(403) <= FREE_ATTEMPTS and statuses.count(429) >= len(clients) - FREE_ATTEMPTS, statuses
    assert all(int(a.headers["retry-after"]) >= 1 for a in answers if a.status_code == 429)
    right = clients[0].post("api/login", json={"password": PASSWORD}, headers={"X-CSRF-Token": tokens[0]})
    assert right.status_code == 429  # while it must wait, not even the right password is tried
    for client in clients:
        client.close()


def test_the_login_throttle_grows_and_ends():
    from edge.login_throttle import LoginThrottle

    now = [100.0]
    throttle = LoginThrottle(clock=lambda: now[0])
    for _ in range(FREE_ATTEMPTS):
        assert throttle.admit("10.0.0.1") is None
    first = throttle.admit("10.0.0.1")
    assert first and throttle.admit("10.0.0.2") is None  # another source is not held back
    now[0] += first
    for _ in range(FREE_ATTEMPTS):
        assert throttle.admit("10.0.0.1") is None
    second = throttle.admit("10.0.0.1")
    assert second > first
    now[0] += second
    assert throttle.admit("10.0.0.1") is None
    throttle.succeeded("10.0.0.1")
    for _ in range(FREE_ATTEMPTS):
        assert throttle.admit("10.0.0.1") is None
    assert throttle.admit("10.0.0.1") == first
