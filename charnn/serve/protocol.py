"""OpenAI's completions API, as shapes: a request body -> checked settings, and the JSON the server answers with.

Only what `/v1/completions` defines is read; `top_k` is the one extra (the openai client sends it through
`extra_body`). `max_tokens` counts characters, whatever the tokenizer. A prompt may be a string or a list of
strings; each gets `n` choices, numbered prompt by prompt as OpenAI does.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from typing import List, Optional

from charnn.api.params import GenerationParams, ParamError

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
KNOWN = {"model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "n", "stop", "seed", "stream",
         "stream_options", "echo", "logprobs", "user", "frequency_penalty", "presence_penalty", "best_of",
         "logit_bias", "suffix"}


@dataclass
class CompletionRequest:
    model: Optional[str]  # a served model's name (None: the first one)
    prompts: List[str]  # one or more prompts
    params: GenerationParams  # settings shared by every prompt (prompt itself set per row)
    stream: bool = False
    include_usage: bool = False
    echo: bool = False
    logprobs: Optional[int] = None
    id: str = field(default_factory=lambda: "cmpl-" + secrets.token_hex(12))
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def scoring(self) -> bool:
        """echo + max_tokens 0 + logprobs: the prompt's own per-token log-probabilities, nothing generated."""
        return self.echo and self.params.length == 0 and self.logprobs is not None


def parse_request(body: bytes, max_tokens_limit: int, max_n: int) -> CompletionRequest:
    """The request body -> a CompletionRequest; ParamError (HTTP 400) names whatever is wrong."""
    try:
        data = json.loads(body or b"null")
    except (ValueError, UnicodeDecodeError):
        raise ParamError("the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ParamError("the request body must be a JSON object")
    unknown = sorted(set(data) - KNOWN)
    if unknown:
        raise ParamError(f"unknown parameter {unknown[0]!r}", unknown[0])
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise ParamError("`model` must be a string", "model")
    prompt = data.get("prompt", "")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise ParamError("`prompt` must be a string or a non-empty list of strings (token ids are not accepted)",
                         "prompt")
    for name in ("frequency_penalty", "presence_penalty"):
        if data.get(name) not in (None, 0, 0.0):
            raise ParamError(f"`{name}` is not supported (only 0)", name)
    unsupported = [k for k, fine in (("best_of", data.get("best_of") in (None, 1)),
                                     ("logit_bias", not data.get("logit_bias")), ("suffix", not data.get("suffix")))
                   if not fine]
    if unsupported:
        raise ParamError(f"`{unsupported[0]}` is not supported", unsupported[0])
    opts = data.get("stream_options") or {}
    if not isinstance(opts, dict):
        raise ParamError("`stream_options` must be an object", "stream_options")
    logprobs = data.get("logprobs")
    if logprobs is not None and (not isinstance(logprobs, int) or isinstance(logprobs, bool) or logprobs < 0):
        raise ParamError("`logprobs` must be an integer >= 0", "logprobs")
    max_tokens = data.get("max_tokens")
    params = GenerationParams(prompt="", length=DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens,
                              temperature=_get(data, "temperature", 1.0), top_k=data.get("top_k"),
                              top_p=_get(data, "top_p", None), n=_get(data, "n", 1), stop=data.get("stop"),
                              seed=data.get("seed"))
    try:
        params.validate(max_length=max_tokens_limit, max_n=max_n)
    except ParamError as e:
        raise ParamError(str(e).replace("`length`", "`max_tokens`"),
                         "max_tokens" if e.param == "length" else e.param) from None
    req = CompletionRequest(model, prompts, params, stream=bool(data.get("stream")),
                            include_usage=bool(opts.get("include_usage")), echo=bool(data.get("echo")),
                            logprobs=logprobs)
    if logprobs is not None and not req.scoring:
        raise ParamError("`logprobs` is supported for scoring a prompt only: with `echo: true` and "
                         "`max_tokens: 0`", "logprobs")
    if req.scoring and req.stream:
        raise ParamError("scoring (`echo` with `max_tokens: 0` and `logprobs`) cannot be streamed", "stream")
    return req


def _get(data: dict, key: str, default):
    value = data.get(key)
    return default if value is None else value


def choice(index: int, text: str, finish_reason: Optional[str], logprobs: Optional[dict] = None) -> dict:
    return {"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish_reason}


def completion(req: CompletionRequest, model: str, choices: List[dict], usage: Optional[dict]) -> dict:
    """A whole response, or (with `usage` None and object text_completion) one streamed chunk."""
    out = {"id": req.id, "object": "text_completion", "created": req.created, "model": model, "choices": choices}
    if usage is not None or not req.stream:
        out["usage"] = usage
    elif req.include_usage:
        out["usage"] = None
    return out


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def sse(data) -> bytes:
    """One server-sent event carrying `data` (JSON, or the literal [DONE])."""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {text}\n\n".encode("utf-8")


def error_body(message: str, kind: str = "invalid_request_error", param: Optional[str] = None,
               code: Optional[str] = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def model_card(name: str, created: int) -> dict:
    return {"id": name, "object": "model", "created": created, "owned_by": "charnn"}
