"""The ASGI app: /v1/completions and /v1/chat/completions (OpenAI's shapes, streamed as server-sent events),
/v1/models, /health, and the playground page at /. Every error answers in OpenAI's JSON; the model's work happens
in `Engine` threads."""

from __future__ import annotations

import asyncio
import hmac
import json
from contextlib import asynccontextmanager
from dataclasses import replace
from importlib import resources
from typing import Dict, Iterator, List, Optional

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from charnn.api.model import Model
from charnn.api.params import ParamError
from charnn.serve import protocol as p
from charnn.serve.config import ServeConfig
from charnn.serve.engine import FAILED, SHUTTING_DOWN, Busy, Engine, Job
from charnn.serve.guard import HostGuard

DISCONNECT_POLL = 0.5  # seconds between checks that a non-streaming client is still there
ECHO_BODIES = 4  # `echo` writes each prompt back with each of its n choices: at most this many --max-body-bytes of it
DRAIN_MOST, DRAIN_SECS = 16 << 20, 5.0  # of a body past --max-body-bytes, read and dropped so the client sees the 413


class TooLarge(Exception):
    pass


def error(status: int, message: str, kind: str = "invalid_request_error", param: Optional[str] = None,
          code: Optional[str] = None, headers: Optional[dict] = None) -> JSONResponse:
    return JSONResponse(p.error_body(message, kind, param, code), status_code=status, headers=headers)


class Server:
    """The loaded models, one engine each, and the request handlers."""

    def __init__(self, models: Dict[str, Model], cfg: ServeConfig):
        self.models, self.cfg = models, cfg
        self.shutting = False  # `shut`: the server is stopping
        self.engines = {name: Engine(m, cfg.max_batch, cfg.max_queue) for name, m in models.items()}
        self.scoring: Dict[str, asyncio.Semaphore] = {}  # one scoring request at a time per model
        self.scoring_waiting: Dict[str, int] = {name: 0 for name in models}
        self.page = resources.files("charnn.serve").joinpath("playground.html").read_text(encoding="utf-8")

    def close(self) -> None:
        for engine in self.engines.values():
            engine.close()

    def shut(self) -> None:
        """The server is stopping: every request in flight ends now (Engine.shut), so uvicorn's grace is not spent
        waiting for streams that would not end by themselves; a scoring request waiting its turn ends too (one
        being scored finishes: it takes a second or so at --max-score-tokens)."""
        self.shutting = True
        for engine in self.engines.values():
            engine.shut()

    def _denied(self, request: Request) -> Optional[JSONResponse]:
        if self.cfg.api_key is None:
            return None
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.cfg.api_key.encode()):
            return None  # (the scheme's case does not matter: RFC 9110)
        return error(401, "missing or wrong API key: send `Authorization: Bearer KEY`", code="invalid_api_key")

    async def playground(self, request: Request) -> Response:
        return HTMLResponse(self.page, headers={"Cache-Control": "no-store"})

    async def health(self, request: Request) -> Response:
        per = {n: {"active_rows": e.active_rows, "queued": e.queued + self.scoring_waiting[n]}  # (scoring waits too)
               for n, e in self.engines.items()}
        return JSONResponse({"status": "ok", "active_rows": sum(v["active_rows"] for v in per.values()),
                             "queued": sum(v["queued"] for v in per.values()), "models": per})

    async def list_models(self, request: Request) -> Response:
        denied = self._denied(request)
        if denied:
            return denied
        return JSONResponse({"object": "list", "data": [p.model_card(n, m.created) for n, m in self.models.items()]})

    async def get_model(self, request: Request) -> Response:
        denied = self._denied(request)
        if denied:
            return denied
        name = request.path_params["name"]
        if name not in self.models:
            return self._no_model(name)
        return JSONResponse(p.model_card(name, self.models[name].created))

    def _no_model(self, name: str) -> JSONResponse:
        return error(404, f"the model {name!r} does not exist; served: {', '.join(self.models)}", param="model",
                     code="model_not_found")

    async def completions(self, request: Request) -> Response:
        return await self._complete(request, p.parse_request)

    async def chat(self, request: Request) -> Response:
        return await self._complete(request, p.parse_chat)

    async def _complete(self, request: Request, parse) -> Response:
        """Either endpoint: `parse` reads its body into a CompletionRequest; the rest is the same."""
        denied = self._denied(request)
        if denied:
            return denied
        try:
            body = await asyncio.wait_for(_read_body(request, self.cfg.max_body_bytes), self.cfg.timeout_body)
        except ClientDisconnect:  # it left while sending: no one to answer (nginx's 499, for the access log)
            return Response(status_code=499)
        except TooLarge:
            await _drain(request)
            return error(413, f"the request body is larger than {self.cfg.max_body_bytes:,} bytes",
                         code="request_too_large", headers={"Connection": "close"})
        except asyncio.TimeoutError:
            return error(408, f"the request body did not arrive within {self.cfg.timeout_body:g} s "
                              "(--timeout-body)", code="request_timeout", headers={"Connection": "close"})
        try:
            req = parse(body, self.cfg.max_tokens_limit, self.cfg.max_batch)
        except ParamError as e:
            return error(400, str(e), param=e.param)
        name = req.model or next(iter(self.models))
        if name not in self.models:
            return self._no_model(name)
        model = self.models[name]
        choices = len(req.prompts) * req.params.n
        if choices > self.cfg.max_batch:
            asked = f"n={req.params.n}" if req.chat else f"{len(req.prompts)} prompts x n={req.params.n} is {choices}"
            return error(400, f"{asked} choices; this server generates at most {self.cfg.max_batch} at once",
                         param="n")
        if req.chat and model.tokenizer.unknown("\n"):  # (a model trained on text without line breaks: a space
            # between the messages, or nothing where it has no space either; never a character the client did not send)
            req.prompts = [p.chat_prompt(req.turns, "" if model.tokenizer.unknown(" ") else " ")]
        try:
            for text in req.prompts:
                model.check_prompt(text)
        except ParamError as e:
            return error(400, str(e), param="messages" if req.chat else "prompt")
        if req.scoring:
            return await self._score(request, req, name, model)
        echoed, most = sum(map(len, req.prompts)) * req.params.n, ECHO_BODIES * self.cfg.max_body_bytes
        if req.echo and echoed > most:  # (a 1 MiB prompt with n 64 was a 64 MiB reply, built on the event loop)
            return error(400, f"`echo` sends the prompt back with each of its {req.params.n} choices, {echoed:,} "
                              f"characters; at most {most:,} ({ECHO_BODIES} x --max-body-bytes)", param="echo")
        rows = [spec for text in req.prompts for spec in replace(req.params, prompt=text).rows()]
        job = Job(rows, asyncio.get_running_loop())
        try:
            self.engines[name].submit(job)
        except ParamError as e:  # a row the batch could not draw: refused here, before it can fail the others
            return error(400, str(e), param=e.param)
        except Busy as e:
            if str(e) == SHUTTING_DOWN:
                return _shutting_down()
            return error(503, f"the server is busy ({e}); retry shortly", kind="server_error", code="overloaded",
                         headers={"Retry-After": "1"})
        prompt_tokens = sum(len(model.tokenizer.encode(t)) for t in req.prompts)
        echoes = [text for text in req.prompts for _ in range(req.params.n)] if req.echo else None
        if req.stream:
            return StreamingResponse(self._events(req, name, job, prompt_tokens, echoes), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await self._collect(request, req, name, job, prompt_tokens, echoes)

    async def _score(self, request: Request, req: p.CompletionRequest, name: str, model: Model) -> Response:
        """Score the prompts, one scoring request at a time per model: its answer (~60 bytes a token, ~180 with
        logprobs 5) is built and written as JSON off the event loop, in pieces (dumps_in_pieces); at most
        --max-queue wait, beyond them 503, and one whose client has gone leaves the queue (abandoned requests were
        each scored in turn, holding up the next client)."""
        limit, n = self.cfg.max_score_tokens, req.params.n  # (n copies of each answer: n times the tokens written)
        if sum(map(len, req.prompts)) * n > limit:  # (a token is at least a character: count only when it may be over)
            tokens = n * await asyncio.to_thread(lambda: sum(len(model.tokenizer.encode(t)) for t in req.prompts))
            if tokens > limit:
                return error(400, f"scoring {tokens:,} tokens{f' (n={n} times)' if n > 1 else ''}; this server scores "
                                  f"at most {limit:,} per request (--max-score-tokens; `charnn eval` scores files of "
                                  "any length)", param="prompt")
        gate = self.scoring.setdefault(name, asyncio.Semaphore(1))
        if gate.locked() and sum(self.scoring_waiting.values()) >= self.cfg.max_queue:
            return error(503, "the server is busy scoring; try again shortly", kind="server_error",
                         code="server_busy", headers={"Retry-After": "1"})
        self.scoring_waiting[name] += 1
        try:
            while not await _acquired(gate, DISCONNECT_POLL):
                if await request.is_disconnected():
                    return Response(status_code=499)
                if self.shutting:  # (queued behind a scoring that runs on: it ends as generation's requests do)
                    return _shutting_down()
        finally:
            self.scoring_waiting[name] -= 1
        try:
            if await request.is_disconnected():  # (it left while the one before it was scored)
                return Response(status_code=499)
            body = await asyncio.to_thread(_scored, req, name, model)
        finally:
            gate.release()
        return Response(body, media_type="application/json")

    async def _events(self, req, name: str, job: Job, prompt_tokens: int, echoes: Optional[List[str]]):
        engine, left = self.engines[name], len(job.specs)
        try:
            if echoes:
                yield p.sse(p.completion(req, name, [p.choice(i, t, None) for i, t in enumerate(echoes)], None))
            for i in range(len(job.specs)) if req.chat else ():  # (as OpenAI: each choice's first chunk names the role)
                yield p.sse(p.completion(req, name, [p.answer(req, i, "", None, first=True)], None))
            while left:
                batch = await job.updates.get()
                if batch and batch[-1][2] == FAILED:  # the status line is sent: say it in the stream, then stop
                    left = 0
                    yield p.sse(p.error_body(batch[-1][1], "server_error"))
                    break
                merged = _merge(batch)
                left -= sum(1 for _, _, reason in merged if reason)
                if req.chat:  # as OpenAI: a choice's text, then its finish_reason in a chunk of its own
                    chunks = [[p.answer(req, i, text, None) for i, text, _ in merged if text],
                              [p.answer(req, i, "", reason) for i, _, reason in merged if reason]]
                else:
                    chunks = [[p.answer(req, i, text, reason) for i, text, reason in merged]]
                for choices in chunks:
                    if choices:
                        yield p.sse(p.completion(req, name, choices, None))
            if req.include_usage:
                yield p.sse(p.completion(req, name, [], p.usage(prompt_tokens, job.tokens)))
            yield p.sse("[DONE]")
        finally:
            if left:  # the client went away (or the server is stopping): free the rows now
                engine.cancel(job)

    async def _collect(self, request: Request, req, name: str, job: Job, prompt_tokens: int,
                       echoes: Optional[List[str]]) -> Response:
        engine, n = self.engines[name], len(job.specs)
        texts, finish, left = list(echoes) if echoes else [""] * n, [None] * n, n
        loop = asyncio.get_running_loop()
        check_at = loop.time() + DISCONNECT_POLL
        try:
            while left:
                try:
                    batch = await asyncio.wait_for(job.updates.get(), DISCONNECT_POLL)
                except asyncio.TimeoutError:
                    batch = ()
                if loop.time() >= check_at:  # on a clock, not only when no piece came: pieces come every block
                    check_at = loop.time() + DISCONNECT_POLL
                    if await request.is_disconnected():
                        return Response(status_code=499)
                for i, piece, reason in batch:
                    if reason == FAILED:
                        left = 0
                        if piece == SHUTTING_DOWN:
                            return _shutting_down()
                        return error(500, piece, kind="server_error")
                    texts[i] += piece
                    if reason:
                        finish[i], left = reason, left - 1
        finally:
            if left:
                engine.cancel(job)
        choices = [p.answer(req, i, t, f) for i, (t, f) in enumerate(zip(texts, finish))]
        return JSONResponse(p.completion(req, name, choices, p.usage(prompt_tokens, job.tokens)))


def _merge(batch) -> List[tuple]:
    """(index, text, finish_reason or None) per index: its pieces joined, its finish_reason if it finished."""
    merged: Dict[int, list] = {}
    for i, piece, reason in batch:
        c = merged.setdefault(i, ["", None])
        c[0] += piece
        c[1] = reason or c[1]
    return [(i, text, reason) for i, (text, reason) in merged.items()]


def _scored(req: p.CompletionRequest, name: str, model: Model) -> bytes:
    """The scoring answer's JSON (run in a thread: a long prompt's takes a while to build and to write)."""
    scored = [model.token_logprobs(text, req.logprobs) for text in req.prompts]
    n = req.params.n  # (n choices per prompt, prompt by prompt, as OpenAI answers: a score is the same each time)
    choices = [p.choice(i * n + j, text, "length", lp) for i, (text, lp) in enumerate(zip(req.prompts, scored))
               for j in range(n)]
    tokens = sum(len(lp["tokens"]) for lp in scored)
    return "".join(dumps_in_pieces(p.completion(req, name, choices, p.usage(tokens, 0)))).encode()


PIECE = 2_000  # list items json.dumps writes in one call: the GIL is let go between calls


def dumps_in_pieces(value) -> Iterator[str]:
    """json.dumps(value, ensure_ascii=False)'s text in pieces: one call on a 100,000-token answer held the GIL for
    0.4 s (18 MB), and every stream and /health stood still meanwhile, though it ran in a thread."""
    if isinstance(value, dict) and value and all(isinstance(k, str) for k in value):
        yield "{"
        for i, (key, item) in enumerate(value.items()):
            yield (", " if i else "") + json.dumps(key, ensure_ascii=False) + ": "
            yield from dumps_in_pieces(item)
        yield "}"
    elif isinstance(value, list) and len(value) > PIECE:  # (a token's entries: small, PIECE at a time)
        yield "["
        for start in range(0, len(value), PIECE):
            yield (", " if start else "") + json.dumps(value[start:start + PIECE], ensure_ascii=False)[1:-1]
        yield "]"
    elif isinstance(value, list) and any(isinstance(item, (dict, list)) for item in value):  # (the choices)
        yield "["
        for i, item in enumerate(value):
            yield ", " if i else ""
            yield from dumps_in_pieces(item)
        yield "]"
    else:
        yield json.dumps(value, ensure_ascii=False)


def _shutting_down() -> JSONResponse:
    return error(503, SHUTTING_DOWN, kind="server_error", code="shutting_down",
                 headers={"Retry-After": "1", "Connection": "close"})


async def _acquired(gate: asyncio.Semaphore, seconds: float) -> bool:
    """Whether `gate` was acquired within `seconds` (a wait cancelled on time takes nothing)."""
    try:
        await asyncio.wait_for(gate.acquire(), seconds)
        return True
    except asyncio.TimeoutError:
        return False


async def _drain(request: Request) -> None:
    """Read and drop what is left of a body refused as too large, up to DRAIN_MOST bytes and DRAIN_SECS: a client
    that writes its whole body before it reads (urllib, raw sockets) got a connection reset, not the 413, when the
    connection closed with its body unread."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > DRAIN_MOST:
        return
    if request.headers.get("expect", "").lower() == "100-continue":  # (reading it would invite the body it
        return  # refuses: uvicorn answers 100 Continue at the first receive; the client waits for this 413)

    async def drain():
        got = 0
        while got <= DRAIN_MOST:
            message = await request.receive()
            got += len(message.get("body", b""))
            if message["type"] != "http.request" or not message.get("more_body", False):
                return
    try:
        await asyncio.wait_for(drain(), DRAIN_SECS)
    except (asyncio.TimeoutError, ClientDisconnect):
        pass


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise TooLarge
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


async def _internal_error(request: Request, exc: Exception) -> Response:
    """A bug: still OpenAI's JSON (uvicorn logs the traceback)."""
    return error(500, f"internal error: {type(exc).__name__}", kind="server_error")


async def _http_error(request: Request, exc: HTTPException) -> Response:
    kinds = {404: "not_found", 405: "method_not_allowed"}
    return error(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}",
                 code=kinds.get(exc.status_code), headers=getattr(exc, "headers", None))  # (a 405's Allow)


def create_app(models: Dict[str, Model], cfg: ServeConfig) -> Starlette:
    """The ASGI app serving `models` (name -> Model); its engines stop when the app shuts down."""
    server = Server(models, cfg)

    @asynccontextmanager
    async def lifespan(app):
        try:
            yield
        finally:
            server.close()

    routes = [Route("/", server.playground), Route("/health", server.health),
              Route("/v1/models", server.list_models), Route("/v1/models/{name:path}", server.get_model),
              Route("/v1/completions", server.completions, methods=["POST"]),
              Route("/v1/chat/completions", server.chat, methods=["POST"])]
    middleware = [Middleware(HostGuard, allow_hosts=cfg.allow_hosts, listen_host=cfg.host,
                             cors_origins=cfg.cors_origins)]  # first: the outermost, before CORS and routing
    if cfg.cors_origins:
        middleware.append(Middleware(CORSMiddleware, allow_origins=list(cfg.cors_origins),
                                     allow_methods=["GET", "POST"], allow_headers=["*"]))  # (whatever the page's
        # client sends: openai-node adds its x-stainless-* headers; only a --cors-origin gets this far)
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan,
                    exception_handlers={HTTPException: _http_error, Exception: _internal_error})
    app.router.redirect_slashes = False  # `/v1/completions/` is a JSON 404, not an empty redirect
    app.state.server = server
    return app
