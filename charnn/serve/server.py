"""Load the checkpoints to serve, name them, and run the app under uvicorn."""

from __future__ import annotations

import errno
import os
import socket
import sys
from typing import Callable, Dict, Optional, Sequence

from charnn.api.model import Model, load_model
from charnn.errors import CharnnError
from charnn.serve.config import ServeConfig

# The generation thread holds the GIL between torch calls; the event loop waits for it up to this long (Python's
# default is 5 ms, which shows up as that much latency on every request the loop handles while the batch runs).
SWITCH_INTERVAL = 0.0005


def load_models(paths: Sequence[Optional[str]], device: str = "auto", int8: bool = False) -> Dict[str, Model]:
    """Checkpoints or run folders (none: the newest run) -> models by name: the run folder's name, or
    NAME=PATH to choose one. `int8`: generate with int8 recurrent weights (CPU)."""
    models: Dict[str, Model] = {}
    for arg in list(paths) or [None]:
        name, _, path = arg.partition("=") if arg and "=" in arg else (None, "", arg)
        try:
            model = load_model(path, device, int8, command="serve")
        except CharnnError as e:  # (with several models: which one)
            raise CharnnError(f"{arg}: {e}" if len(paths) > 1 else str(e)) from None
        if not isinstance(model, Model):
            raise CharnnError(f"{model.path} is a sequence-to-sequence model; `charnn serve` serves language "
                              "models (use `charnn transduce`, or charnn.load(...).transduce from Python)")
        if not model.generates:  # (refused only once serving began, after its "model ..." line)
            raise CharnnError(f"{model.path} is a classifier (train --classifier): it labels texts and writes none; "
                              "`charnn serve` serves language models (use `charnn classify`)")
        name = name or model.name
        if name in models:
            raise CharnnError(f"two checkpoints would both be served as {name!r}; name one with NAME=PATH")
        models[name] = model
    return models


def default_threads() -> int:
    """torch's CPU threads: all cores but one (which the HTTP side needs), at least one. On a busy 2-core machine,
    two threads were several times slower than one (benchmarks/SERVING.md)."""
    import torch
    return max(1, min(torch.get_num_threads(), (os.cpu_count() or 2) - 1))


def serve(models: Dict[str, Model], cfg: ServeConfig, on_ready: Optional[Callable[[str], None]] = None,
          sock: Optional[socket.socket] = None, on_note: Optional[Callable[[str], None]] = None) -> None:
    """Serve until interrupted on `sock` (default: a new one on cfg.host:cfg.port); `on_ready(url)` is called
    once the server is up; `on_note(text)` hears of a limit lowered to fit the machine."""
    import torch
    import uvicorn

    from charnn.serve import limits
    from charnn.serve.app import create_app

    cfg.validate()
    sock = sock or listen(cfg.host, cfg.port)
    torch.set_num_threads(cfg.threads or default_threads())
    sys.setswitchinterval(SWITCH_INTERVAL)
    cap, files = limits.connection_cap(cfg.max_connections)
    if cap < cfg.max_connections and on_note is not None:
        on_note(f"at most {cap} connections at once, not {cfg.max_connections}: this process may open {files} files "
                "(ulimit -n)")
    limits.quiet_logs()
    http = limits.protocol(cap, cfg.timeout_headers, cfg.timeout_write, cfg.max_connections_per_client)
    app = create_app(models, cfg)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False,
                                           timeout_graceful_shutdown=3, timeout_keep_alive=cfg.timeout_keep_alive,
                                           http=http))
    original = server.startup

    async def startup(sockets=None):
        await original(sockets)
        if server.started and on_ready is not None:
            host, port = sock.getsockname()[:2]
            on_ready(f"http://{f'[{host}]' if ':' in host else host}:{port}")

    server.startup = startup
    exiting = server.handle_exit  # (SIGINT, SIGTERM: end the requests in flight, then uvicorn's shutdown)

    def handle_exit(sig, frame):
        app.state.server.shut()
        exiting(sig, frame)

    server.handle_exit = handle_exit
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: any free one); CharnnError when it cannot be had."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise CharnnError(f"--host {host!r} is not an address or name this machine can resolve ({e.strerror})") from None
    except UnicodeError:  # (a name part over 63 characters, or an empty one: the idna codec's traceback)
        raise CharnnError(f"--host {host!r} is not a valid host name (each dot-separated part 1 to 63 "
                          "characters)") from None
    sock = socket.socket(family, kind, proto)
    try:
        if os.name == "nt":  # (Windows' SO_REUSEADDR lets a second server take a port in use: no error, the
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_EXCLUSIVEADDRUSE, 1)  # connections split between them)
        else:  # (a restart binds at once, past the last run's connections in TIME_WAIT)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        why = "the port is in use; pick another with --port" if e.errno == errno.EADDRINUSE else e.strerror
        raise CharnnError(f"cannot listen on {host}:{port}: {why}") from None
    return sock
