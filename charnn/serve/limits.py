"""What a connection may hold, under uvicorn: a deadline for a request's headers, a cap on open connections,
a deadline for a reply nobody reads, the open-file limit the cap must stay under, and logs that do not flood.

uvicorn's own `timeout_keep_alive` starts only after a reply, so a connection that never sends a byte, or sends
its headers a byte at a time, was held for ever; and its `limit_concurrency` answers 503 only once a request's
headers have arrived, which idle connections never do. With no file descriptors left, asyncio's accept loop
logs "socket.accept() out of system resource" for every attempt, thousands a second.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Dict, Optional, Tuple

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from charnn.serve import protocol as p
from charnn.serve.config import is_loopback

FD_RESERVE = 64  # file descriptors kept out of the connection cap: model files, logs, refusing the excess
LINGER = 1.0  # seconds a refused connection may take to read its 503 and hang up
LOG_INTERVAL = 10.0  # seconds between two log lines of one kind of resource error
QUIET = ("socket.accept() out of system resource", "Invalid HTTP request received.",  # logged once per interval
         "socket.send() raised exception.")
# asyncio's bare words for writes to a client that has gone (a reset or closed connection, before the server
# noticed): said as what happened
SAID = {"socket.send() raised exception.": "a client went away before its answer was written (socket.send() "
                                           "raised exception.)"}


class LimitedH11(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, with the limits above (set on a subclass by `protocol`)."""

    max_connections = 1000
    per_client = 64  # connections from one address that is not loopback (a local proxy's are all 127.0.0.1)
    clients: Dict[str, int] = {}  # open connections per such address (a dict of its own per `protocol` class)
    timeout_headers = 10.0
    timeout_write = 60.0

    def connection_made(self, transport) -> None:
        self.rejected, self.timer, self.stall, self.counted_peer = False, None, None, None
        peer = (transport.get_extra_info("peername") or (None,))[0]
        refused = refusal(self.max_connections) if len(self.connections) >= self.max_connections else None
        if refused is None and isinstance(peer, str) and not is_loopback(peer):
            if self.clients.get(peer, 0) >= self.per_client:  # (one client held every slot: the others got 503)
                refused = refusal(self.per_client, "this client has", "--max-connections-per-client")
            else:
                self.counted_peer, self.clients[peer] = peer, self.clients.get(peer, 0) + 1
        if refused is not None:
            self.transport, self.rejected = transport, True
            self.timer = self.loop.call_later(LINGER, transport.abort)
            try:
                transport.write(refused)
                if transport.can_write_eof():
                    transport.write_eof()  # the reply, then FIN: read the client's request and hang up when it does
            except OSError:  # the client has gone already (a reset while the reply went out): nothing to tell
                transport.abort()
            return
        super().connection_made(transport)
        self._expect_headers()

    def data_received(self, data: bytes) -> None:
        if not self.rejected:  # a refused client's request is read and dropped
            super().data_received(data)

    def connection_lost(self, exc: Optional[Exception]) -> None:
        for timer in (self.timer, self.stall):
            if timer is not None:
                timer.cancel()
        if self.counted_peer is not None:
            left = self.clients.pop(self.counted_peer, 1) - 1
            if left:
                self.clients[self.counted_peer] = left
        if not self.rejected:
            super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        """A request HTTP/1.1 cannot parse (a bad request line, headers over 16 KiB, a bad chunk of a body):
        OpenAI's JSON, then close."""
        if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):  # (no reply begun: a bad body's chunk comes after
            # the head, while the app waits for it)
            self.transport.write(reply(400, "Bad Request", p.error_body(f"invalid HTTP request: {msg}",
                                                                        code="invalid_http_request")))
        self.transport.close()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._expect_headers()  # the next request's headers, on a kept-alive connection

    def _expect_headers(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.loop.call_later(self.timeout_headers, self._headers_late)

    def _headers_late(self) -> None:
        """No whole request head since the connection opened or the last reply ended (or the client still
        trickles the body of a request already answered): close it."""
        self.timer = None
        waiting = self.conn.their_state is h11.IDLE or self.conn.our_state in (h11.DONE, h11.MUST_CLOSE)
        if waiting and not self.transport.is_closing():
            self.transport.close()

    def pause_writing(self) -> None:
        super().pause_writing()
        if self.stall is None:
            self.stall = self.loop.call_later(self.timeout_write, self._stalled)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.stall is not None:
            self.stall.cancel()
            self.stall = None

    def _stalled(self) -> None:
        """The client has read nothing of the reply for timeout_write seconds: drop it (abort, since close
        would wait for the unread buffer to drain); the app sees a disconnect and frees its rows."""
        self.stall = None
        self.transport.abort()


def protocol(max_connections: int, timeout_headers: float, timeout_write: float, per_client: int = 64) -> type:
    """The protocol class for uvicorn.Config(http=...), with these limits."""
    return type("CharnnH11", (LimitedH11,), {"max_connections": max_connections, "per_client": per_client,
                                              "clients": {}, "timeout_headers": timeout_headers,
                                              "timeout_write": timeout_write})


def refusal(limit: int, who: str = "the server has", flag: str = "--max-connections") -> bytes:
    """A whole HTTP/1.1 503 in OpenAI's error JSON, for a connection past a cap."""
    return reply(503, "Service Unavailable", p.error_body(
        f"{who} {limit} connections open, its limit ({flag}); retry shortly", "server_error",
        code="too_many_connections"), "retry-after: 1\r\n")


def reply(status: int, reason: str, body: dict, extra: str = "") -> bytes:
    """A whole HTTP/1.1 response with a JSON body, written straight to a transport, that closes the connection."""
    data = json.dumps(body).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(data)}\r\n"
            f"{extra}connection: close\r\n\r\n")
    return head.encode() + data


def connection_cap(wanted: int) -> Tuple[int, Optional[int]]:
    """(connections to allow, the open-file limit) after raising the soft limit on open files toward the hard
    one as far as `wanted` connections need: the cap stays FD_RESERVE below what is left, so the server refuses
    the excess with a 503 instead of running out of descriptors. (wanted, None) where there are no such limits."""
    try:
        import resource
    except ImportError:  # Windows
        return wanted, None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    used = open_files()
    need = wanted + used + FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):  # (macOS caps it below an infinite hard limit): keep the soft one
            pass
    if soft == resource.RLIM_INFINITY:
        return wanted, None
    return max(1, min(wanted, soft - used - FD_RESERVE)), soft


def open_files() -> int:
    """File descriptors this process has open now (64 where that cannot be seen)."""
    for folder in ("/proc/self/fd", "/dev/fd"):
        try:
            return len(os.listdir(folder))
        except OSError:
            continue
    return 64


class OncePerInterval(logging.Filter):
    """Lets one record of each QUIET kind through per LOG_INTERVAL seconds; the next one let through says how
    many were held back."""

    def __init__(self, interval: float = LOG_INTERVAL):
        super().__init__()
        self.interval = interval
        self.last: Dict[str, float] = {}
        self.held: Dict[str, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        kind = next((q for q in QUIET if message.startswith(q)), None)
        if kind is None:
            return True
        now = time.monotonic()
        if now - self.last.get(kind, -self.interval) < self.interval:
            self.held[kind] = self.held.get(kind, 0) + 1
            return False
        self.last[kind] = now
        held = self.held.pop(kind, 0)
        message = SAID.get(message, message)
        record.msg, record.args = f"{message} ({held} more like it since the last one)" if held else message, ()
        return True


def quiet_logs() -> OncePerInterval:
    """Install the filter on the loggers that repeat resource errors (asyncio's accept loop, uvicorn's parser)."""
    log_filter = OncePerInterval()
    for name in ("asyncio", "uvicorn.error"):
        logging.getLogger(name).addFilter(log_filter)
    return log_filter
