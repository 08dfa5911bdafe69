"""Which Host and Origin a request may carry: the defence against DNS rebinding and other sites' pages.

A web page the user visits can point its own DNS name at 127.0.0.1 once it has loaded (DNS rebinding) and then
read whatever a loopback server answers: to the browser it is one origin, so CORS never applies. Its requests
carry that name in Host, so the server answers only Host values that cannot be rebound: IP literals (rebinding
needs a name), localhost and *.localhost (browsers resolve those to loopback themselves), the name it listens on,
and the names `--allow-host` adds ("*.example.org", or "*" for any). An Origin, which browsers send on another
site's requests, must be the Host's own name, an allowed name or a `--cors-origin`: another site's page cannot
make the server spend its rows on answers the browser would not let it read.
"""

from __future__ import annotations

import ipaddress
from typing import Iterable, Optional
from urllib.parse import urlsplit

from starlette.responses import JSONResponse

from charnn.serve import protocol as p


class HostGuard:
    """ASGI middleware: a 403 in OpenAI's error JSON for a Host or Origin the server does not answer to."""

    def __init__(self, app, allow_hosts: Iterable[str] = (), listen_host: str = "",
                 cors_origins: Iterable[str] = ()):
        self.app = app
        names = {n.lower().rstrip(".") for n in allow_hosts}
        if listen_host and not _is_ip(listen_host):
            names.add(listen_host.lower().rstrip("."))  # the name it was told to listen on
        self.any_host = "*" in names
        self.names = {n for n in names if not n.startswith("*")}
        self.suffixes = tuple(n[1:] for n in names if n.startswith("*."))  # ".example.org"
        self.origins = set(cors_origins)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            headers = {k: v for k, v in scope["headers"] if k in (b"host", b"origin")}
            problem = self.problem(headers.get(b"host"), headers.get(b"origin"))
            if problem:
                return await JSONResponse(p.error_body(problem[1], code=f"{problem[0]}_not_allowed"),
                                          status_code=403)(scope, receive, send)
        await self.app(scope, receive, send)

    def problem(self, host: Optional[bytes], origin: Optional[bytes]) -> Optional[tuple]:
        """("host" or "origin", why) when the request must be refused; None when it may go on."""
        name = None
        if host is not None:  # (HTTP/1.0 may leave it out; a browser never does)
            name = hostname(host.decode("latin-1"))
            if name is None or not self.host_allowed(name):
                shown = host.decode("latin-1")[:100]
                flag = f"--allow-host {name}" if name else "--allow-host NAME"
                return "host", (f"this server does not answer to the Host {shown!r} (a guard against DNS rebinding); "
                                f"if that is its name, start it with `{flag}`")
        if origin is None or "*" in self.origins:
            return None
        text = origin.decode("latin-1")
        seen = hostname(urlsplit(text).netloc) if "://" in text else None
        if text in self.origins or (seen is not None and (seen == name or self.named(seen))):
            return None
        return "origin", (f"requests from the web page at {text[:100]!r} are not allowed; to let that page call "
                          f"the API, start the server with `--cors-origin {text[:100]}`")

    def host_allowed(self, name: str) -> bool:
        return _is_ip(name) or name == "localhost" or name.endswith(".localhost") or self.named(name)

    def named(self, name: str) -> bool:
        """Allowed by name: --allow-host (or the listening host's name)."""
        return self.any_host or name in self.names or name.endswith(self.suffixes)


def hostname(value: str) -> Optional[str]:
    """A Host header's (or an origin's host:port) name, lower-case, without port, brackets or final dot; None
    for anything that is not host[:port]."""
    value = value.strip().lower()
    if not value or any(c in value for c in "@/?#\\ \t"):
        return None
    try:
        parts = urlsplit("//" + value)
        parts.port  # noqa: B018  (raises ValueError for a port that is not a number in range)
    except ValueError:
        return None
    return (parts.hostname or "").rstrip(".") or None


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
        return True
    except ValueError:
        return False
