"""Load the checkpoints to serve, name them, and run the app under uvicorn."""

from __future__ import annotations

import os
import sys
from typing import Callable, Dict, Optional, Sequence

from charnn.api.model import Model, load
from charnn.errors import CharnnError
from charnn.serve.config import ServeConfig

# The generation thread holds the GIL between torch calls; the event loop waits for it up to this long (Python's
# default is 5 ms, which shows up as that much latency on every request the loop handles while the batch runs).
SWITCH_INTERVAL = 0.0005


def load_models(paths: Sequence[Optional[str]], device: str = "auto") -> Dict[str, Model]:
    """Checkpoints or run folders (none: the newest run) -> models by name: the run folder's name, or
    NAME=PATH to choose one."""
    models: Dict[str, Model] = {}
    for arg in list(paths) or [None]:
        name, _, path = arg.partition("=") if arg and "=" in arg else (None, "", arg)
        model = load(path, device)
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


def serve(models: Dict[str, Model], cfg: ServeConfig, on_ready: Optional[Callable[[str], None]] = None) -> None:
    """Serve until interrupted; `on_ready(url)` is called once the socket listens."""
    import torch
    import uvicorn

    from charnn.serve.app import create_app

    cfg.validate()
    torch.set_num_threads(cfg.threads or default_threads())
    sys.setswitchinterval(SWITCH_INTERVAL)
    app = create_app(models, cfg)
    config = uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=3)
    server = uvicorn.Server(config)
    if on_ready is not None:
        original = server.startup

        async def startup(sockets=None):
            await original(sockets)
            if server.started:
                host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
                on_ready(f"http://{host}:{cfg.port}")

        server.startup = startup
    server.run()
    if not server.started:
        raise CharnnError(f"could not listen on {cfg.host}:{cfg.port} (in use, or not an address of this machine)")
