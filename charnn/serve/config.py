"""`charnn serve`'s settings, and the rule that keeps a server off the network unless someone asked for it."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Optional, Tuple

from charnn.config import DEVICES, MAX_THREADS
from charnn.errors import ConfigError

HOST_NAME = re.compile(r"(\*\.)?[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?\.?")  # a name, or *.domain


MAX_BATCH = 4096  # --max-batch's ceiling: rows one batch generates, over all requests
API_KEY = re.compile(r"[\x21-\x7e]+")  # what `Authorization: Bearer KEY` can carry
ORIGIN = re.compile(r"[a-z][a-z0-9+.-]*://[^/?#@\s]+")  # scheme://host[:port] as a browser's Origin header has it


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"  # address to listen on (loopback unless asked otherwise)
    port: int = 8000  # TCP port
    api_key: Optional[str] = None  # clients must send `Authorization: Bearer KEY` (not for /health)
    insecure: bool = False  # allow a non-loopback host without an API key
    cors_origins: Tuple[str, ...] = ()  # browser origins allowed to call the API (none: no CORS headers)
    max_batch: int = 64  # rows (choices) generated together in one batch, over all requests
    max_queue: int = 64  # requests that may wait for rows; beyond them a 503 with Retry-After
    max_tokens_limit: int = 4096  # the largest max_tokens (characters) a request may ask for
    max_body_bytes: int = 1 << 20  # the largest request body (413 beyond it)
    max_score_tokens: int = 100_000  # the most tokens one scoring request (echo + logprobs) may score
    device: str = "auto"  # auto, cpu, cuda or mps
    threads: Optional[int] = None  # CPU threads for torch (default: all cores but one, at least one)
    int8: bool = False  # generate with int8 recurrent weights (CPU only)
    allow_hosts: Tuple[str, ...] = ()  # Host names answered besides IP literals and localhost ("*": any name)
    max_connections: int = 1000  # open connections; beyond, 503 and close (kept below the open-file limit)
    max_connections_per_client: int = 64  # from one address that is not loopback; beyond, 503 and close
    timeout_headers: float = 10.0  # seconds a connection has to send a request's headers (from connect or reply)
    timeout_keep_alive: float = 5.0  # seconds an idle connection stays open after a reply
    timeout_body: float = 30.0  # seconds a request's body may take to arrive (408 beyond)
    timeout_write: float = 60.0  # seconds a reply may wait for a client that reads nothing (then it is dropped)

    def validate(self) -> "ServeConfig":
        problems = []
        if not 0 <= self.port <= 65535:
            problems.append(f"`--port` must be in [0, 65535], got {self.port}")
        for flag, value in (("--max-batch", self.max_batch), ("--max-tokens-limit", self.max_tokens_limit),
                            ("--max-body-bytes", self.max_body_bytes), ("--max-score-tokens",
                                                                        self.max_score_tokens)):
            if value < 1:
                problems.append(f"`{flag}` must be at least 1, got {value}")
        if self.max_batch > MAX_BATCH:  # (2**63 was a traceback after the port was bound; 10**8 ate the memory)
            problems.append(f"`--max-batch` must be at most {MAX_BATCH:,}, got {self.max_batch:,}")
        for flag, value in (("--max-connections", self.max_connections),
                            ("--max-connections-per-client", self.max_connections_per_client)):
            if value < 1:
                problems.append(f"`{flag}` must be at least 1, got {value}")
        for flag, value in (("--timeout-headers", self.timeout_headers), ("--timeout-keep-alive",
                            self.timeout_keep_alive), ("--timeout-body", self.timeout_body),
                            ("--timeout-write", self.timeout_write)):
            if not 0 < value < 1e9:  # (NaN fails too)
                problems.append(f"`{flag}` must be a number of seconds above 0, got {value}")
        for origin in self.cors_origins:  # (one with a path or a trailing slash matched no browser's, silently)
            if origin not in ("*", "null") and not (ORIGIN.fullmatch(origin) and origin == origin.lower()):
                problems.append(f"`--cors-origin` takes an origin as a browser sends it, scheme://host[:port] in "
                                f"lowercase with no path (e.g. http://localhost:3000), null (a file:// page) or *; "
                                f"got {origin!r}")
        for name in self.allow_hosts:
            if name != "*" and not HOST_NAME.fullmatch(name):
                problems.append(f"`--allow-host` takes a host name (or *.domain, or * for any), not {name!r}")
        if self.max_queue < 0:
            problems.append(f"`--max-queue` must be >= 0, got {self.max_queue}")
        if self.device not in DEVICES:
            problems.append(f"`--device` must be one of {', '.join(DEVICES)}, not {self.device!r}")
        if self.threads is not None and not 1 <= self.threads <= MAX_THREADS:
            problems.append(f"`--threads` must be between 1 and {MAX_THREADS}, got {self.threads}")
        if self.api_key is not None and not self.api_key.strip():
            problems.append("`--api-key` must not be empty")
        elif self.api_key is not None and not API_KEY.fullmatch(self.api_key):  # (a newline: no client could send it)
            problems.append("`--api-key` must be printable ASCII without spaces: a client sends it in a header")
        if not is_loopback(self.host) and self.api_key is None and not self.insecure:
            problems.append(f"refusing to listen on {self.host} without `--api-key`: anyone who can reach it could "
                            "use it; give a key, or `--insecure` to serve it open")
        if problems:
            raise ConfigError("; ".join(problems))
        return self


def bare_host(host: str) -> str:
    """--host as the socket takes it: an IPv6 address without the brackets a URL puts around it ([::1])."""
    return host[1:-1] if host.startswith("[") and host.endswith("]") and ":" in host else host


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
