"""An OPC UA server (asyncua) for SCADA and MES: the last verdict, counters and state, Trigger and SetThreshold.

The node map is edge.io.opcua_nodes (README.md, "OPC UA"). The server runs its asyncio loop on a thread of its
own. The frame loop only changes a snapshot under a lock and wakes the server's loop, which writes the changed
values into the address space: a client never reaches the frame loop. Trigger goes through the trigger desk like
a Modbus coil (exactly one answer per call: busy at once while busy); SetThreshold is queued like MQTT's
cmd/threshold, so the same range check and storage apply, and waits for its reply.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from asyncua import Server, ua

from edge.commands import PART_ID_MAX_CHARS
from edge.config.opcua import OpcuaConfig
from edge.core.files import read_limited
from edge.io import IoError
from edge.io.opcua_calls import answer_calls_apart, cancel_calls
from edge.io.opcua_logins import Logins, follow_peers
from edge.ports import Listener, listen_problem
from edge.io.opcua_nodes import (NAMESPACE_URI, SET_THRESHOLD_IN, SET_THRESHOLD_OUT, STATION, TRIGGER_IN, TRIGGER_OUT,
                                 VARIABLES, arguments, node_id, variant)
from edge.io.triggers import INSPECTED, Answer, Trigger

logger = logging.getLogger("lineguard")

START_TIMEOUT_S = 120.0  # asyncua builds the standard address space first: seconds on a Pi
STOP_TIMEOUT_S = 5.0
REPLY_WAIT_S = 10.0  # SetThreshold waits this long for the main loop's reply
MAX_SESSIONS = 32
MAX_CERT_BYTES = 64 * 1024
FLUSH_INTERVAL_S = 0.02  # the variables follow the station at most this often: a fast line's verdicts coalesce


@dataclass(frozen=True)
class Station:
    """What the server calls in the station, from its own thread."""

    offer: Callable[[Trigger], bool]  # the trigger desk's: queued, or answered busy at once
    command: Callable[[str, bytes], None]  # queues a command as MQTT's cmd/<name> does (CommandQueue.on_command)
    threshold_problem: Callable[[float], "str | None"]  # why a threshold is refused for the running model, or None


class OpcuaServer:
    """Serves the Station object on config.endpoint_url; IoError naming the key when it cannot."""

    def __init__(self, config: OpcuaConfig, device_id: str, password: str | None, station: Station) -> None:
        self.config, self.device_id, self.station = config, device_id, station
        self._lock = threading.Lock()
        self._values = {name: initial for name, (_, initial, _) in VARIABLES.items()}
        self._dirty = set(self._values)
        self._flushing = False
        self._flushed_s = 0.0
        self._calls: dict[str, asyncio.Future] = {}
        self._ids = itertools.count(1)
        self._server: Server | None = None
        self._nodes: dict[str, ua.NodeId] = {}
        self._loop = asyncio.new_event_loop()
        self._stopping: asyncio.Event | None = None
        self._listening = threading.Event()
        self._failure: str | None = None
        credentials = load_credentials(config)  # a file it cannot read stops start-up before any thread
        check_port(config)  # a taken port fails fast, not after the address space is built
        self._thread = threading.Thread(target=self._serve, args=(password, credentials), name="opcua", daemon=True)
        self._thread.start()
        if not self._listening.wait(START_TIMEOUT_S) or self._failure:
            self.close()
            raise IoError(f"opcua.port: cannot listen on {config.host}:{config.port}: "
                          f"{self._failure or 'no answer in time'}")
        logger.info("opcua: serving %s (%s)", config.endpoint_url, security_summary(config))

    # --- what the station shows (main loop and trigger threads) ---

    def update(self, **values: object) -> None:
        """Set variables by name (VARIABLES), all in one step; the server's loop writes them."""
        with self._lock:
            for name, value in values.items():
                if self._values[name] != value:
                    self._values[name] = value
                    self._dirty.add(name)
            wake = bool(self._dirty) and not self._flushing and self._server is not None
            self._flushing = self._flushing or wake
        if wake:
            self._call_soon(self._flush_soon)

    def snapshot(self) -> dict[str, object]:
        with self._lock:
            return dict(self._values)

    def answered(self, answer: Answer) -> None:
        """The trigger desk's answer to any trigger: an OPC UA call's goes back to its caller."""
        request_id = answer.trigger.request_id
        if answer.trigger.origin != "opcua" or request_id is None:
            return
        values = self.snapshot()  # the verdict is shown (an inline sink) before its trigger is answered
        inspected = answer.outcome == INSPECTED and values["Seq"] == answer.seq
        outputs = (answer.seq or 0, values["Verdict"] if inspected else "", values["Score"] if inspected else 0.0,
                   answer.outcome, answer.reason)
        self._call_soon(self._settle, request_id, outputs)

    def command_replied(self, command: str, ok: bool, reason: str, request_id: str | None) -> None:
        """Every command reply, from any interface: a SetThreshold call waits for its own."""
        if request_id is not None and request_id.startswith("opcua-"):
            self._call_soon(self._settle, request_id, (ok, reason))

    def close(self) -> None:
        if self._stopping is not None:
            self._call_soon(self._stopping.set)
        self._thread.join(STOP_TIMEOUT_S)

    # --- the server thread ---

    def _call_soon(self, callback, *args) -> None:
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop has closed: the station is stopping
            pass

    def _settle(self, request_id: str, outcome: tuple) -> None:
        future = self._calls.pop(request_id, None)
        if future is not None and not future.done():
            future.set_result(outcome)

    def _flush_soon(self) -> None:
        wait_s = self._flushed_s + FLUSH_INTERVAL_S - time.monotonic()
        if wait_s > 0:
            self._loop.call_later(wait_s, self._start_flush)
        else:
            self._start_flush()

    def _start_flush(self) -> None:
        self._loop.create_task(self._flush())

    async def _flush(self) -> None:
        """Write every changed value, in one go (a call's answer flushes at once, so its caller reads it)."""
        if self._server is None:
            return
        self._flushed_s = time.monotonic()
        with self._lock:
            changed = {name: self._values[name] for name in self._dirty}
            self._dirty.clear()
            self._flushing = False
        for name, value in changed.items():
            await self._server.write_attribute_value(self._nodes[name], ua.DataValue(variant(name, value)))

    def _serve(self, password: str | None, credentials: tuple) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._run(password, credentials))
        except Exception as exc:  # noqa: BLE001 - reported to start-up, which refuses to run without it
            self._failure = str(exc) or type(exc).__name__
            self._listening.set()
        finally:
            for future in self._calls.values():
                future.cancel()
            self._loop.close()

    async def _run(self, password: str | None, credentials: tuple) -> None:
        logging.getLogger("asyncua").setLevel(logging.WARNING)  # a line per call and session at INFO
        self._stopping = asyncio.Event()
        certificate, private_key, trusted = credentials
        server = Server(user_manager=Logins(self.config, password, trusted))
        await server.init()
        follow_peers(server.iserver)
        answer_calls_apart()  # a Trigger waiting for its part must not hold up its client's other requests
        server.iserver.max_connections = MAX_SESSIONS
        server.set_endpoint(self.config.endpoint_url)
        server.set_server_name(f"lineguard {self.device_id}")
        server.product_uri, server.manufacturer_name = "urn:lineguard", "lineguard"
        await server.set_application_uri(f"urn:lineguard:{self.device_id}")
        server.set_security_policy(security_policies(self.config))
        server.set_identity_tokens(identity_tokens(self.config))
        if certificate is not None:
            await server.load_certificate(*certificate)
            await server.load_private_key(private_key[0], None, private_key[1])
        await self._add_station(server)
        await server.start()
        self._server = server
        with self._lock:
            self._flushing = True
        await self._flush()
        self._listening.set()
        try:
            await self._stopping.wait()
        finally:
            self._server = None
            await cancel_calls()
            await server.stop()

    async def _add_station(self, server: Server) -> None:
        index = await server.register_namespace(NAMESPACE_URI)
        station = await server.nodes.objects.add_object(node_id(STATION, index), ua.QualifiedName(STATION, index))
        for name, (kind, initial, text) in VARIABLES.items():
            node = await station.add_variable(node_id(name, index), ua.QualifiedName(name, index),
                                              ua.Variant(initial, kind), kind)
            await node.write_attribute(ua.AttributeIds.Description, ua.DataValue(ua.Variant(
                ua.LocalizedText(text), ua.VariantType.LocalizedText)))
            self._nodes[name] = node.nodeid
        await station.add_method(node_id("Trigger", index), ua.QualifiedName("Trigger", index), self._trigger,
                                 arguments(TRIGGER_IN), arguments(TRIGGER_OUT))
        await station.add_method(node_id("SetThreshold", index), ua.QualifiedName("SetThreshold", index),
                                 self._set_threshold, arguments(SET_THRESHOLD_IN), arguments(SET_THRESHOLD_OUT))

    # --- methods (on the server's loop) ---

    async def _trigger(self, parent: ua.NodeId, part_id: ua.Variant | None = None):
        part = part_id.Value if isinstance(part_id, ua.Variant) else None
        if part is not None and (not isinstance(part, str) or len(part) > PART_ID_MAX_CHARS):
            return await self._refuse(ua.StatusCodes.BadInvalidArgument, "Trigger refused: PartId must be a String "
                                      f"of at most {PART_ID_MAX_CHARS} characters")
        request_id, future = self._waiting()
        self.station.offer(Trigger("opcua", time.monotonic(), part or None, request_id))
        seq, verdict, score, outcome, reason = await future  # every trigger is answered (edge.io.triggers)
        self.update(LastCallReason=f"Trigger: {reason}")
        await self._flush()  # the verdict and answer variables agree with what the caller gets
        return [ua.Variant(seq, ua.VariantType.UInt32), ua.Variant(verdict, ua.VariantType.String),
                ua.Variant(float(score), ua.VariantType.Double), ua.Variant(outcome, ua.VariantType.String),
                ua.Variant(reason, ua.VariantType.String)]

    async def _set_threshold(self, parent: ua.NodeId, value: ua.Variant | None = None):
        number = value.Value if isinstance(value, ua.Variant) else None
        if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number) or number <= 0:
            return await self._refuse(ua.StatusCodes.BadInvalidArgument,
                                      f"SetThreshold refused: {number!r} is not a finite number > 0")
        problem = self.station.threshold_problem(float(number))
        if problem is not None:
            return await self._refuse(ua.StatusCodes.BadOutOfRange, f"SetThreshold refused: {problem}")
        request_id, future = self._waiting()
        self.station.command("threshold", json.dumps({"threshold": float(number), "request_id": request_id}).encode())
        try:
            ok, reason = await asyncio.wait_for(future, REPLY_WAIT_S)
        except asyncio.TimeoutError:
            self._calls.pop(request_id, None)
            return await self._refuse(ua.StatusCodes.BadTimeout, f"SetThreshold: no answer within {REPLY_WAIT_S:g} s")
        if not ok:
            return await self._refuse(ua.StatusCodes.BadInvalidState, f"SetThreshold refused: {reason}")
        self.update(LastCallReason=f"SetThreshold: {reason}", CurrentThreshold=float(number))
        await self._flush()
        return [ua.Variant(float(number), ua.VariantType.Double)]

    def _waiting(self) -> tuple[str, asyncio.Future]:
        request_id = f"opcua-{next(self._ids)}"
        future = self._loop.create_future()
        self._calls[request_id] = future
        return request_id, future

    async def _refuse(self, code: int, reason: str) -> ua.StatusCode:
        logger.warning("opcua: %s", reason)
        self.update(LastCallReason=reason)
        await self._flush()
        return ua.StatusCode(code)


def security_policies(config: OpcuaConfig) -> list[ua.SecurityPolicyType]:
    """None on loopback only; Basic256Sha256 SignAndEncrypt whenever the server has a certificate."""
    policies = [ua.SecurityPolicyType.NoSecurity] if config.loopback else []
    if config.certificate is not None:
        policies.append(ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt)
    return policies


def identity_tokens(config: OpcuaConfig) -> list[type]:
    tokens = [ua.AnonymousIdentityToken] if config.anonymous_allowed else []
    if config.username is not None:
        tokens.append(ua.UserNameIdentityToken)
    if config.trusted_clients:
        tokens.append(ua.X509IdentityToken)
    return tokens


def security_summary(config: OpcuaConfig) -> str:
    policies = ", ".join("None" if p == ua.SecurityPolicyType.NoSecurity else "Basic256Sha256 SignAndEncrypt"
                         for p in security_policies(config))
    logins = [name for name, on in (("anonymous", config.anonymous_allowed), ("user/password", config.username),
                                    ("client certificate", config.trusted_clients)) if on]
    return f"security {policies}; login {', '.join(logins)}"


def load_credentials(config: OpcuaConfig) -> tuple:
    """(certificate, private key) as (content, format) for asyncua, and the trusted client certificates as DER;
    IoError naming the key of a file that cannot be read or is not one."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    def read(path, key: str) -> tuple[bytes, str]:
        try:
            content = read_limited(path, MAX_CERT_BYTES)
        except OSError as exc:
            raise IoError(f"opcua.{key}: cannot read {path}: {exc.strerror or exc}") from None
        return content, "pem" if b"-----BEGIN" in content else "der"

    def certificate(path, key: str) -> tuple[bytes, str]:
        content, form = read(path, key)
        try:
            cert = (x509.load_pem_x509_certificate if form == "pem" else x509.load_der_x509_certificate)(content)
        except ValueError as exc:
            raise IoError(f"opcua.{key}: {path} is not an X.509 certificate: {exc}") from None
        return cert.public_bytes(serialization.Encoding.DER), "der"

    if config.certificate is None:
        return None, None, []
    key_content, key_form = read(config.private_key, "private_key")
    try:
        load = serialization.load_pem_private_key if key_form == "pem" else serialization.load_der_private_key
        load(key_content, password=None)
    except (ValueError, TypeError) as exc:
        raise IoError(f"opcua.private_key: {config.private_key} is not an unencrypted private key: {exc}") from None
    trusted = [certificate(path, "trusted_clients")[0] for path in config.trusted_clients]
    return certificate(config.certificate, "certificate"), (key_content, key_form), trusted


def check_port(config: OpcuaConfig) -> None:
    problem = listen_problem(Listener("opcua.port", config.host, config.port, dual_stack=False))
    if problem is not None:
        raise IoError(problem)
