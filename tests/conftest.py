"""Shared fixtures: a real Mosquitto broker per test and an MQTT message collector.

Fixtures
--------
``broker``
    A running :class:`MosquittoBroker` on a free 127.0.0.1 port with
    anonymous access and no persistence. It can be stopped, killed and
    restarted on the same port during the test; it is torn down afterwards.
``make_broker``
    Factory for brokers with extra configuration (TLS listeners, ACL or
    password files, persistence): ``make_broker(config_lines=[...])``.
``make_collector``
    Factory for :class:`MessageCollector` subscribers that are closed after
    the test: ``make_collector(broker, ["lg/dev1/#"])``.

The broker and collector classes live in tests/support/broker.py, shared with the benchmarks.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest

from tests.support.broker import MessageCollector, MosquittoBroker


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A running mosquitto on a free local port (anonymous, no persistence)."""
    instance = MosquittoBroker(tmp_path / "broker").start()
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture
def make_broker(tmp_path: Path) -> Iterator[Callable[..., MosquittoBroker]]:
    """Factory: ``make_broker(config_lines=[...], start=True, **kwargs)`` -> MosquittoBroker.

    Keyword arguments go to :class:`MosquittoBroker`. With ``start=False`` the
    broker is configured (its port reserved) but not started. All brokers are
    stopped at the end of the test.
    """
    brokers: list[MosquittoBroker] = []

    def factory(config_lines: Iterable[str] = (), start: bool = True, **kwargs: object) -> MosquittoBroker:
        instance = MosquittoBroker(tmp_path / f"broker-{len(brokers)}", config_lines, **kwargs)
        brokers.append(instance)
        return instance.start() if start else instance

    try:
        yield factory
    finally:
        for instance in brokers:
            instance.stop()


@pytest.fixture
def make_collector() -> Iterator[Callable[..., MessageCollector]]:
    """Factory: ``make_collector(broker, topics, **kwargs)`` -> subscribed MessageCollector.

    Keyword arguments go to :class:`MessageCollector`. Collectors are closed at the end of the test.
    """
    collectors: list[MessageCollector] = []

    def factory(target: MosquittoBroker, topics: Iterable[str], **kwargs: object) -> MessageCollector:
        collector = MessageCollector(target.host, target.port, topics, **kwargs)
        collectors.append(collector)
        return collector

    try:
        yield factory
    finally:
        for collector in collectors:
            with contextlib.suppress(Exception):
                collector.close()
