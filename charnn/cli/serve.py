"""`charnn serve`: an OpenAI-compatible HTTP server over one or more checkpoints; logs go to stderr."""

from __future__ import annotations

from typing import Annotated, List, Optional

import typer

from charnn.cli.options import Device
from charnn.cli.output import err, note_threads, user_errors


def serve(
    checkpoints: Annotated[Optional[List[str]], typer.Argument(
        help="Checkpoints or run folders to serve (default: the newest run); each is served under its run "
             "folder's name, or NAME=PATH.", show_default=False)] = None,
    host: Annotated[str, typer.Option(help="Address to listen on; anything but loopback needs --api-key or "
                                           "--insecure.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    api_key: Annotated[Optional[str], typer.Option(envvar="CHARNN_API_KEY", help="Require "
                                                   "'Authorization: Bearer KEY' (all but /health and the page).",
                                                   show_default=False)] = None,
    insecure: Annotated[bool, typer.Option("--insecure", help="Allow a non-loopback --host without a key.")] = False,
    cors_origin: Annotated[Optional[List[str]], typer.Option(help="A browser origin allowed to call the API "
                                                                  "(repeatable; default: none).")] = None,
    max_batch: Annotated[int, typer.Option(help="Rows (choices) generated together, over all requests.")] = 64,
    max_queue: Annotated[int, typer.Option(help="Requests that may wait for rows; beyond, 503 with "
                                                "Retry-After.")] = 64,
    max_tokens_limit: Annotated[int, typer.Option(help="The largest max_tokens (characters) a request may "
                                                       "ask for.")] = 4096,
    max_body_bytes: Annotated[int, typer.Option(help="The largest request body (413 beyond it).")] = 1 << 20,
    max_score_tokens: Annotated[int, typer.Option(help="The most tokens one scoring request (echo, max_tokens 0, "
                                                       "logprobs) may score; `charnn eval` scores files of any "
                                                       "length.")] = 100_000,
    allow_host: Annotated[Optional[List[str]], typer.Option(help="A host name clients reach the server by, "
                                                                 "besides IP addresses, localhost and --host "
                                                                 "(repeatable; *.example.org: its subdomains; *: "
                                                                 "any). Other Host headers get 403, a guard "
                                                                 "against DNS rebinding.", show_default=False)] = None,
    max_connections: Annotated[int, typer.Option(help="Open connections at once; beyond, 503 and closed (kept "
                                                      "below the open-file limit).")] = 1000,
    max_connections_per_client: Annotated[int, typer.Option(help="Open connections from one client address at "
                                                                 "once; beyond, 503 (loopback clients, such as "
                                                                 "a local proxy, are not counted).")] = 64,
    timeout_headers: Annotated[float, typer.Option(help="Seconds a connection has to send a request's headers, "
                                                        "from connecting or the last reply.")] = 10.0,
    timeout_keep_alive: Annotated[float, typer.Option(help="Seconds an idle connection stays open after a "
                                                           "reply.")] = 5.0,
    timeout_body: Annotated[float, typer.Option(help="Seconds a request body may take to arrive (408 "
                                                     "beyond).")] = 30.0,
    timeout_write: Annotated[float, typer.Option(help="Seconds a reply may wait on a client that reads none of "
                                                      "it; then the connection is dropped.")] = 60.0,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads for torch (default: all cores "
                                                        "but one, at least one).")] = None,
    device: Device = "auto",
    int8: Annotated[bool, typer.Option("--int8", help="CPU only: generate with int8 recurrent weights, as "
                                                      "`charnn sample --int8` (faster; a close approximation of "
                                                      "the model). Scoring (logprobs) stays exact.")] = False,
):
    """Serve models over HTTP: OpenAI's /v1/completions and /v1/chat/completions (streaming, continuous
    batching) and a playground at /."""
    with user_errors("serve"):
        try:
            import starlette  # noqa: F401  the serve extra: checked here, since the server imports them late
            import uvicorn  # noqa: F401

            from charnn.serve.config import ServeConfig, bare_host
            from charnn.serve.server import listen, load_models
            from charnn.serve.server import serve as run
        except ImportError as e:
            from charnn.errors import CharnnError
            raise CharnnError(f"charnn serve needs the serve extra ({e.name} is missing): "
                              "pip install 'charnn[serve]'") from None
        cfg = ServeConfig(host=bare_host(host), port=port, api_key=api_key, insecure=insecure,
                          cors_origins=tuple(cors_origin or ()), max_batch=max_batch, max_queue=max_queue,
                          max_tokens_limit=max_tokens_limit, max_body_bytes=max_body_bytes,
                          max_score_tokens=max_score_tokens, device=device,
                          threads=threads, int8=int8, allow_hosts=tuple(allow_host or ()),
                          max_connections=max_connections, max_connections_per_client=max_connections_per_client,
                          timeout_headers=timeout_headers,
                          timeout_keep_alive=timeout_keep_alive, timeout_body=timeout_body,
                          timeout_write=timeout_write).validate()
        note_threads(cfg.threads)
        sock = listen(cfg.host, cfg.port)  # first: a taken port is one line, before any loading
        models = load_models(checkpoints or [], cfg.device, cfg.int8)
        for name, model in models.items():
            err.print(f"model {name!r}: {model.path} on {model.device}{', int8' if cfg.int8 else ''}", markup=False)
        run(models, cfg, sock=sock, on_note=lambda text: err.print(text, markup=False),
            on_ready=lambda url: err.print(f"serving on {url} (playground at {url}/; Ctrl-C stops)", markup=False))
