"""`charnn serve`'s settings, and the rule that keeps a server off the network unless someone asked for it."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Optional, Tuple

from charnn.config import DEVICES, MAX_THREADS
from charnn.errors import ConfigError


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
    device: str = "auto"  # auto, cpu, cuda or mps
    threads: Optional[int] = None  # CPU threads for torch (default: all cores but one, at least one)
    int8: bool = False  # generate with int8 recurrent weights (CPU only)

    def validate(self) -> "ServeConfig":
        problems = []
        if not 0 <= self.port <= 65535:
            problems.append(f"`--port` must be in [0, 65535], got {self.port}")
        for flag, value in (("--max-batch", self.max_batch), ("--max-tokens-limit", self.max_tokens_limit),
                            ("--max-body-bytes", self.max_body_bytes)):
            if value < 1:
                problems.append(f"`{flag}` must be at least 1, got {value}")
        if self.max_queue < 0:
            problems.append(f"`--max-queue` must be >= 0, got {self.max_queue}")
        if self.device not in DEVICES:
            problems.append(f"`--device` must be one of {', '.join(DEVICES)}, not {self.device!r}")
        if self.threads is not None and not 1 <= self.threads <= MAX_THREADS:
            problems.append(f"`--threads` must be between 1 and {MAX_THREADS}, got {self.threads}")
        if self.api_key is not None and not self.api_key.strip():
            problems.append("`--api-key` must not be empty")
        if not is_loopback(self.host) and self.api_key is None and not self.insecure:
            problems.append(f"refusing to listen on {self.host} without `--api-key`: anyone who can reach it could "
                            "use it; give a key, or `--insecure` to serve it open")
        if problems:
            raise ConfigError("; ".join(problems))
        return self


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
