"""OpenAI's completions and chat completions APIs, as shapes: a request body -> checked settings, and the JSON the
server answers with.

Only what `/v1/completions` and `/v1/chat/completions` define is read; `top_k` is the one extra (the openai client
sends it through `extra_body`). `max_tokens` counts characters, whatever the tokenizer. A prompt may be a string or
a list of strings; each gets `n` choices, numbered prompt by prompt as OpenAI does.

A character model has no chat template: a chat's prompt is its messages' text, one message a line, and the reply
starts on the next line; a last assistant message is continued instead (`chat_prompt`; a space stands for the line
break where the model's vocabulary has none).
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from charnn.api.params import GenerationParams, ParamError
from charnn.sampling import shown

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
MAX_DEPTH = 16  # JSON nesting a request may have (OpenAI's deepest field is 2 levels down)
MAX_LOGPROBS = 5  # OpenAI's largest `logprobs` for /v1/completions
SHARED = {"model", "max_tokens", "temperature", "top_p", "top_k", "n", "stop", "seed", "stream", "stream_options",
          "logprobs", "user", "frequency_penalty", "presence_penalty", "logit_bias"}
KNOWN = SHARED | {"prompt", "echo", "best_of", "suffix"}
CHAT_KNOWN = SHARED | {"messages", "max_completion_tokens", "top_logprobs", "response_format", "tools", "tool_choice",
                       "parallel_tool_calls"}
DEFAULT_CHAT_MAX_TOKENS = 256  # OpenAI's chat has no default but the model's context; a character model has none
ROLES = ("system", "developer", "user", "assistant")


@dataclass
class CompletionRequest:
    model: Optional[str]  # a served model's name (None: the first one)
    prompts: List[str]  # one or more prompts
    params: GenerationParams  # settings shared by every prompt (prompt itself set per row)
    stream: bool = False
    include_usage: bool = False
    echo: bool = False
    logprobs: Optional[int] = None
    chat: bool = False  # /v1/chat/completions: its answers' shapes (`message`, `delta`)
    turns: Optional[Tuple[List[str], bool]] = None  # a chat's messages' texts, and whether the last is continued
    id: str = field(default_factory=lambda: "cmpl-" + secrets.token_hex(12))
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def scoring(self) -> bool:
        """echo + max_tokens 0 + logprobs: the prompt's own per-token log-probabilities, nothing generated."""
        return self.echo and self.params.length == 0 and self.logprobs is not None


def parse_request(body: bytes, max_tokens_limit: int, max_n: int) -> CompletionRequest:
    """The request body -> a CompletionRequest; ParamError (HTTP 400) names whatever is wrong. Every field's
    JSON type is checked exactly: `true` is not a number, `5` is not a list of stop strings."""
    data = _object(body, KNOWN)
    prompt = data.get("prompt", "")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise ParamError("`prompt` must be a string or a non-empty list of strings (token ids are not accepted)",
                         "prompt")
    if _typed(data, "best_of", int, "an integer") not in (None, 1):
        raise ParamError("`best_of` is not supported (only 1)", "best_of")
    if _typed(data, "suffix", str, "a string"):
        raise ParamError("`suffix` is not supported", "suffix")
    logprobs = data.get("logprobs")
    if logprobs is not None and not (_integer(logprobs) and 0 <= logprobs <= MAX_LOGPROBS):
        raise ParamError(f"`logprobs` must be an integer from 0 to {MAX_LOGPROBS}", "logprobs")
    req = _request(data, prompts, data.get("max_tokens"), DEFAULT_MAX_TOKENS, max_tokens_limit, max_n)
    req.echo, req.logprobs = bool(_typed(data, "echo", bool, "true or false")), logprobs
    if logprobs is not None and not req.scoring:
        raise ParamError("`logprobs` is supported for scoring a prompt only: with `echo: true` and "
                         "`max_tokens: 0`", "logprobs")
    if req.scoring and req.stream:
        raise ParamError("scoring (`echo` with `max_tokens: 0` and `logprobs`) cannot be streamed", "stream")
    return req


def parse_chat(body: bytes, max_tokens_limit: int, max_n: int) -> CompletionRequest:
    """A /v1/chat/completions body -> a CompletionRequest (`chat`) whose one prompt is `chat_prompt` of its
    messages; ParamError (HTTP 400) as parse_request. What a character model cannot do (tools, images, log-
    probabilities, a JSON answer) is refused by name, its neutral values (false, [], "none", text) accepted."""
    data = _object(body, CHAT_KNOWN)
    turns = chat_turns(data.get("messages"))
    if _typed(data, "logprobs", bool, "true or false"):
        raise ParamError("`logprobs` is not supported for chat completions (score text with /v1/completions: "
                         "`echo`, `max_tokens: 0`, `logprobs`)", "logprobs")
    if _typed(data, "top_logprobs", int, "an integer") not in (None, 0):
        raise ParamError("`top_logprobs` is not supported", "top_logprobs")
    if _typed(data, "tools", list, "an array"):
        raise ParamError("`tools` are not supported: a character model does not call functions", "tools")
    if data.get("tool_choice") not in (None, "none", "auto"):
        raise ParamError("`tool_choice` is not supported (only \"none\" or \"auto\": no tools)", "tool_choice")
    _typed(data, "parallel_tool_calls", bool, "true or false")
    form = _typed(data, "response_format", dict, "an object")
    if form is not None and form != {"type": "text"}:
        raise ParamError("`response_format` is not supported (only {\"type\": \"text\"})", "response_format")
    limit, old = data.get("max_completion_tokens"), data.get("max_tokens")
    for name, value in (("max_tokens", old), ("max_completion_tokens", limit)):
        if value is not None and not (_integer(value) and value >= 1):  # (before comparing: true == 1 == 1.0)
            raise ParamError(f"`{name}` must be an integer >= 1 (a chat answer has a character at least), got "
                             f"{shown(value)}", name)
    if limit is not None and old is not None and limit != old:
        raise ParamError("`max_tokens` and `max_completion_tokens` differ: send one", "max_completion_tokens")
    req = _request(data, [chat_prompt(turns)], old if limit is None else limit, DEFAULT_CHAT_MAX_TOKENS,
                   max_tokens_limit, max_n, "max_tokens" if limit is None else "max_completion_tokens")
    req.chat, req.turns, req.id = True, turns, "chatcmpl-" + req.id.removeprefix("cmpl-")
    return req


def chat_prompt(turns: Tuple[List[str], bool], newline: str = "\n") -> str:
    """The messages' text as the model's prompt: each message on its own line, then a new line for the reply; a
    last assistant message is continued, not closed. (`newline`: what stands for a line break.)"""
    texts, continued = turns
    return newline.join(texts) + ("" if continued else newline)


def chat_turns(messages) -> Tuple[List[str], bool]:
    """The messages' texts (a content string, or its text parts joined) and whether the last is the assistant's
    (to be continued); ParamError for anything else."""
    if not isinstance(messages, list) or not messages:
        raise ParamError("`messages` must be a non-empty array of {\"role\", \"content\"} objects", "messages")
    lines = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise ParamError(f"`{where}` must be an object, not {_kind(m)}", "messages")
        if m.get("tool_calls") not in (None, []) or m.get("function_call") is not None or \
                m.get("role") in ("tool", "function"):
            raise ParamError(f"`{where}`: tool and function messages are not supported", "messages")
        extra = sorted(set(m) - {"role", "content", "name", "tool_calls", "function_call", "refusal"})
        if extra:
            raise ParamError(f"`{where}` has an unknown field {extra[0]!r}", "messages")
        if m.get("role") not in ROLES:
            raise ParamError(f"`{where}.role` must be one of {', '.join(ROLES)}", "messages")
        for key in ("name", "refusal"):
            if m.get(key) is not None and not isinstance(m[key], str):
                raise ParamError(f"`{where}.{key}` must be a string, not {_kind(m[key])}", "messages")
        lines.append(_content(m.get("content"), where, m["role"] == "assistant"))
    return lines, messages[-1]["role"] == "assistant"


def _content(content, where: str, assistant: bool) -> str:
    if content is None and assistant:  # (an assistant turn that held only a refusal or tool calls)
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list) or not all(isinstance(part, dict) for part in content):
        raise ParamError(f"`{where}.content` must be a string or an array of text parts", "messages")
    for part in content:
        if part.get("type") != "text" or not isinstance(part.get("text"), str) or set(part) - {"type", "text"}:
            raise ParamError(f"`{where}.content`: only text parts ({{\"type\": \"text\", \"text\": ...}}) are "
                             "supported", "messages")
    return "".join(part["text"] for part in content)


def _object(body: bytes, known: set) -> dict:
    """The body as a JSON object of `known` fields, with the fields both endpoints share checked by type."""
    data = _json(body)
    if not isinstance(data, dict):
        raise ParamError("the request body must be a JSON object")
    unknown = sorted(set(data) - known)
    if unknown:
        raise ParamError(f"unknown parameter {unknown[0]!r}", unknown[0])
    _typed(data, "model", str, "a string")
    _typed(data, "user", str, "a string")
    _unsupported(data)
    return data


def _request(data: dict, prompts: List[str], max_tokens, default: int, max_tokens_limit: int, max_n: int,
             limit_name: str = "max_tokens") -> CompletionRequest:
    """The settings both endpoints share, checked: sampling, n, stop, seed, the length, streaming."""
    opts = _typed(data, "stream_options", dict, "an object") or {}
    extra = sorted(set(opts) - {"include_usage"})
    if extra:
        raise ParamError(f"unknown stream option {extra[0]!r} (only include_usage)", "stream_options")
    include_usage = _typed(opts, "include_usage", bool, "true or false", "stream_options")
    params = GenerationParams(prompt="", length=min(default, max_tokens_limit) if max_tokens is None else max_tokens,
                              temperature=_get(data, "temperature", 1.0), top_k=data.get("top_k"),
                              top_p=_get(data, "top_p", None), n=_get(data, "n", 1), stop=data.get("stop"),
                              seed=data.get("seed"))
    try:
        params.validate(max_length=max_tokens_limit, max_n=max_n)
    except ParamError as e:
        raise ParamError(str(e).replace("`length`", f"`{limit_name}`").replace("`max_tokens`", f"`{limit_name}`"),
                         limit_name if e.param in ("length", "max_tokens") else e.param) from None
    req = CompletionRequest(data.get("model"), prompts, params,
                            stream=bool(_typed(data, "stream", bool, "true or false")),
                            include_usage=bool(include_usage))
    if data.get("stream_options") is not None and not req.stream:  # (as OpenAI: it was accepted and ignored)
        raise ParamError("`stream_options` applies to a streamed answer: set `stream: true`", "stream_options")
    return req


def _json(body: bytes):
    """The body as JSON: UTF-8, strict JSON (no NaN or Infinity), at most MAX_DEPTH deep, every string (keys
    too) valid Unicode (a lone surrogate like \\ud800 is not, and could not be written back as UTF-8)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ParamError(f"the request body is not UTF-8 (byte {e.start}); send JSON in UTF-8") from None
    try:
        data = json.loads(text or "null", parse_constant=_not_json)
    except RecursionError:
        raise ParamError(f"the request body nests deeper than {MAX_DEPTH} levels") from None
    except json.JSONDecodeError as e:
        raise ParamError(f"the request body is not valid JSON ({e.msg}: line {e.lineno} column {e.colno})") from None
    except ValueError as e:  # NaN or Infinity, or an integer of more than 4,300 digits
        raise ParamError(f"the request body is not valid JSON ({str(e)[:80]})") from None
    todo = [(data, 1, None)]  # (value, depth, the top-level field it is in): iterative, whatever the depth
    while todo:
        value, depth, field = todo.pop()
        if depth > MAX_DEPTH:
            raise ParamError(f"the request body nests deeper than {MAX_DEPTH} levels", field)
        if isinstance(value, str):
            _unicode(value, field)
        elif isinstance(value, dict):
            for k, v in value.items():
                _unicode(k, field)
                todo.append((v, depth + 1, k if field is None else field))
        elif isinstance(value, list):
            todo.extend((v, depth + 1, field) for v in value)
    return data


def _not_json(constant: str):
    raise ValueError(f"{constant} is not JSON")


def _unicode(text: str, field: Optional[str]) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = text[e.start].encode("utf-8", "backslashreplace").decode()
        raise ParamError(f"the request holds a lone surrogate ({bad}) in a string: not Unicode text",
                         None if field is None else clean(field)) from None


def _typed(data: dict, key: str, kind: type, what: str, param: Optional[str] = None):
    """data[key] if it is None, absent or of exactly `kind` (a bool is not an int); else a ParamError."""
    value = data.get(key)
    if value is not None and not (isinstance(value, kind) and (kind is bool or not isinstance(value, bool))):
        raise ParamError(f"`{key}` must be {what}, not {_kind(value)}", param or key)
    return value


def _unsupported(data: dict) -> None:
    """Fields OpenAI defines that charnn leaves at their neutral value: that value (or null) is fine."""
    for name in ("frequency_penalty", "presence_penalty"):
        value = data.get(name)
        if value is not None and not (isinstance(value, (int, float)) and not isinstance(value, bool)):
            raise ParamError(f"`{name}` must be a number, not {_kind(value)}", name)
        if value not in (None, 0):
            raise ParamError(f"`{name}` is not supported (only 0)", name)
    if _typed(data, "logit_bias", dict, "an object"):
        raise ParamError("`logit_bias` is not supported (only {})", "logit_bias")


def _kind(value) -> str:
    """A JSON value's type, as JSON names it."""
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "an array",
            dict: "an object"}.get(type(value), type(value).__name__)


def _integer(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _get(data: dict, key: str, default):
    value = data.get(key)
    return default if value is None else value


def clean(text: str) -> str:
    """`text` with anything UTF-8 cannot carry (lone surrogates) written as escapes, so an answer quoting a
    client's own bytes back can always be sent."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def choice(index: int, text: str, finish_reason: Optional[str], logprobs: Optional[dict] = None) -> dict:
    return {"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish_reason}


def answer(req: CompletionRequest, index: int, text: str, finish_reason: Optional[str], first: bool = False) -> dict:
    """One choice in the request's endpoint's shape: a completion's text; a chat's message, or in a stream its
    delta (`first`: the one that names the role)."""
    if not req.chat:
        return choice(index, text, finish_reason)
    if not req.stream:
        return {"index": index, "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None, "finish_reason": finish_reason}
    delta = {"role": "assistant", "content": text} if first else {"content": text} if text else {}
    return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}


def completion(req: CompletionRequest, model: str, choices: List[dict], usage: Optional[dict]) -> dict:
    """A whole response, or (with `usage` None and a streamed request) one streamed chunk."""
    kind = ("chat.completion.chunk" if req.stream else "chat.completion") if req.chat else "text_completion"
    out = {"id": req.id, "object": kind, "created": req.created, "model": model, "choices": choices}
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
    return {"error": {"message": clean(message), "type": kind, "param": None if param is None else clean(param),
                      "code": code}}


def model_card(name: str, created: int) -> dict:
    return {"id": name, "object": "model", "created": created, "owned_by": "charnn"}
