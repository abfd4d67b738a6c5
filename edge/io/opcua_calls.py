"""Method calls answered apart from the rest of their connection's requests.

asyncua's server answers the requests of one connection one at a time. A Trigger call waits for its part
(trigger.delay_ms, then a frame and its inspection), and meanwhile the same connection's reads, keepalive probes
and publish requests would wait behind it: a client whose watchdog is shorter than that wait (asyncua's own
probes every second) drops the connection in the middle of a Trigger. OPC UA matches responses to requests by
their handle, so a call may be answered after requests that came later: each call runs in a task of its own.

This wraps asyncua's UaProcessor.process_message (an internal); if asyncua changes shape, calls are answered in
turn as before (slower for such clients, never wrong).
"""
from __future__ import annotations

import asyncio
import logging

from asyncua import ua

logger = logging.getLogger("lineguard")

CALL_REQUEST = ua.NodeId(ua.ObjectIds.CallRequest_Encoding_DefaultBinary)
CALLS_APART = 4  # per connection; beyond it a call is answered in turn again (a client looping on calls waits)
_running: set[asyncio.Task] = set()  # the calls under way: a task nothing refers to may be collected


def answer_calls_apart() -> bool:
    """Wrap asyncua's processor (once per process); False when its shape is not the one known here."""
    try:
        from asyncua.server.uaprocessor import UaProcessor
        from asyncua.ua.ua_binary import nodeid_from_binary
    except ImportError:
        return False
    original = getattr(UaProcessor, "process_message", None)
    if original is None:
        logger.warning("opcua: asyncua has no UaProcessor.process_message; method calls are answered in turn")
        return False
    if getattr(original, "answers_calls_apart", False):
        return True

    async def process_message(self, seqhdr, body):
        try:
            is_call = nodeid_from_binary(body.copy()) == CALL_REQUEST  # a copy: the original reads the body itself
        except Exception:  # not ours to judge: asyncua answers it as before
            is_call = False
        apart = getattr(self, "calls_apart", 0)
        if not is_call or apart >= CALLS_APART:
            return await original(self, seqhdr, body)
        self.calls_apart = apart + 1
        task = asyncio.get_running_loop().create_task(original(self, seqhdr, body))
        _running.add(task)
        task.add_done_callback(lambda done: _call_done(self, done))
        return True  # the connection goes on; the call's own task sends its response

    process_message.answers_calls_apart = True
    UaProcessor.process_message = process_message
    return True


def _call_done(processor, task: asyncio.Task) -> None:
    processor.calls_apart -= 1
    _running.discard(task)


async def cancel_calls() -> None:
    """Before the server stops: end the calls still waiting (their triggers are answered on the station's side)."""
    waiting = [task for task in _running if not task.done()]
    for task in waiting:
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)
