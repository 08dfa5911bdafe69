"""`charnn serve` under abuse: every field with every JSON type, bodies of every size and encoding, bad Host and
Origin headers, slow and vanishing clients, more connections than it may hold, and a process out of file
descriptors. Each test names the failure it guards against; all of it runs in well under a minute."""

import asyncio
import http.client
import json
import math
import resource
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest
import torch
from conftest import subprocess_env
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("uvicorn", reason="charnn serve needs the serve extra: pip install -e '.[serve]'")
pytest.importorskip("openai", reason="the openai client is in the dev extra: pip install -e '.[dev]'")

from test_serve import Served  # noqa: E402  (after the skips: it needs the openai client)

MAX_BATCH, MAX_TOKENS, MAX_BODY, MAX_CONNECTIONS = 8, 40, 20000, 12
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                          HealthCheck.too_slow])


@pytest.fixture(scope="module")
def served(trained_run):
    """A server with small limits and one-second timeouts, so abuse is quick to provoke."""
    s = Served(trained_run.run_dir, "--max-batch", str(MAX_BATCH), "--max-tokens-limit", str(MAX_TOKENS),
               "--max-body-bytes", str(MAX_BODY), "--max-connections", str(MAX_CONNECTIONS), "--timeout-headers", "1",
               "--timeout-keep-alive", "1", "--timeout-body", "1", "--allow-host", "charnn.test",
               "--allow-host", "*.models.test", "--cors-origin", "http://app.test")
    yield s
    s.close()


@pytest.fixture(scope="module")
def model(trained_run):
    import charnn
    return charnn.load(trained_run.run_dir, device="cpu")


def post(server, body, headers=None, timeout=30, path="/v1/completions"):
    """(status, headers, body bytes) of one POST to `path`; `body` as bytes is sent as it is."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    data = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")
    conn.request("POST", path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
    r = conn.getresponse()
    out = r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    conn.close()
    return out


def openai_error(status, headers, raw, code=None):
    """The error object of a reply in OpenAI's shape (JSON, exactly message/type/param/code, message a line)."""
    assert headers["content-type"].startswith("application/json"), (status, headers, raw[:200])
    body = json.loads(raw)
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    err = body["error"]
    assert isinstance(err["message"], str) and err["message"] and "\n" not in err["message"]
    assert err["type"] in ("invalid_request_error", "server_error")
    assert code is None or err["code"] == code, err
    return err


# --- 4. one request must not fail the others ----------------------------------------------------------------

def test_a_bad_parameter_is_a_400_and_a_stream_in_flight_finishes(trained_run, model):
    """Was: {"top_k": true} reached the shared batch step, which raised, and every stream in flight ended with
    `generation failed`."""
    s = Served(trained_run.run_dir, "--max-tokens-limit", "2000")
    try:
        conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=60)
        body = {"prompt": "the", "max_tokens": 2000, "seed": 3, "stream": True}
        conn.request("POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
        stream = conn.getresponse()
        first = stream.readline()
        assert stream.status == 200 and first.startswith(b"data: {")  # generating now
        for bad in ({"prompt": "a", "top_k": True}, {"prompt": "a", "top_k": 2.5}, {"prompt": "a", "n": True},
                    {"prompt": "a", "top_p": "0.5"}, {"prompt": "a", "seed": True}, {"prompt": "a", "stop": 5}):
            status, headers, raw = post(s, bad)
            assert status == 400 and openai_error(status, headers, raw)["param"] == next(k for k in bad if k != "prompt")
        assert s.health()["active_rows"] == 1  # the stream's row is still generating
        events = [e for e in (first + stream.read()).decode().split("\n\n") if e]
        assert events[-1] == "data: [DONE]"
        chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
        assert "error" not in chunks[-1] and chunks[-1]["choices"][0]["finish_reason"] == "length"
        assert "".join(c["choices"][0]["text"] for c in chunks) == model.generate("the", length=2000, seed=3)
    finally:
        s.close()


async def job_updates(job) -> list:
    """An engine job's updates, up to its end (finished, or failed)."""
    updates = []
    while not updates or not updates[-1][2]:
        updates += await asyncio.wait_for(job.updates.get(), 60)
    return updates


def test_a_job_that_cannot_start_fails_alone(trained_run, model, monkeypatch):
    """Was: an exception from batcher.add (one job's prompt) failed every job in flight."""

    from charnn.api.params import ParamError
    from charnn.sampling import SamplingParams
    from charnn.generation.batcher import RowSpec
    from charnn.serve.engine import FAILED, Engine, Job

    engine = Engine(model, max_batch=4, max_queue=4)
    real_add = engine.batcher.add

    def add(spec, tag=None):
        if spec.prompt == "boom":
            raise RuntimeError("this prompt cannot start")
        return real_add(spec, tag=tag)

    monkeypatch.setattr(engine.batcher, "add", add)

    async def both():
        loop = asyncio.get_running_loop()
        good = Job([RowSpec("the", 3000, SamplingParams(seed=1))], loop)
        bad = Job([RowSpec("boom", 50, SamplingParams(seed=1))], loop)
        engine.submit(good)
        first = await asyncio.wait_for(good.updates.get(), 60)  # the good job is in the batch
        engine.submit(bad)
        return first + await job_updates(good), await job_updates(bad)

    try:
        good, bad = asyncio.run(both())
        assert bad[-1][2] == FAILED and "this prompt cannot start" in bad[-1][1]
        assert good[-1][2] == "length" and all(u[2] != FAILED for u in good)
        assert "".join(u[1] for u in good) == model.generate("the", length=3000, seed=1)
        with pytest.raises(ParamError, match="top_k"):  # a row the step could not draw is refused at the door
            engine.submit(Job([RowSpec("the", 5, SamplingParams(top_k=True, seed=0))], None))
        assert engine.rows_reserved == 0 and engine.batcher.active == 0
    finally:
        engine.close()


def test_a_long_prompt_that_cannot_load_fails_alone(trained_run, model, monkeypatch):
    """A long prompt loads in slices during later steps (charnn.generation.prefill); an error there (memory, say)
    must fail its own job only, as an error at the door does, and leave no dead prefill behind."""

    from charnn.generation import batcher as batcher_module
    from charnn.generation.batcher import RowSpec
    from charnn.sampling import SamplingParams
    from charnn.serve.engine import FAILED, Engine, Job

    real_prefill = batcher_module.prefill

    def prefill(model_, ids, device, chunk=256, window=4096):
        if len(ids) > 5000:
            yield
            raise RuntimeError("out of memory while loading")
        return (yield from real_prefill(model_, ids, device, chunk, window))

    monkeypatch.setattr(batcher_module, "prefill", prefill)
    engine = Engine(model, max_batch=4, max_queue=4)

    async def both():
        loop = asyncio.get_running_loop()
        good = Job([RowSpec("the", 3000, SamplingParams(seed=1))], loop)
        bad = Job([RowSpec("the cat sat on a mat\n" * 400, 50, SamplingParams(seed=1))], loop)
        engine.submit(good)
        first = await asyncio.wait_for(good.updates.get(), 60)
        engine.submit(bad)
        return first + await job_updates(good), await job_updates(bad)

    try:
        good, bad = asyncio.run(both())
        assert bad[-1][2] == FAILED and "out of memory while loading" in bad[-1][1]
        assert good[-1][2] == "length" and all(u[2] != FAILED for u in good)
        assert "".join(u[1] for u in good) == model.generate("the", length=3000, seed=1)
        assert engine.batcher.loading == [] and engine.rows_reserved == 0 and engine.batcher.active == 0
    finally:
        engine.close()


# --- 5. every field, every JSON type ------------------------------------------------------------------------

def _integer(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _stops(v):
    items = [v] if isinstance(v, str) else v if isinstance(v, list) else None
    return items is not None and len(items) <= 4 and all(isinstance(s, str) and s for s in items)


VALID = {  # what each field may be, by OpenAI's JSON types (null: the default); a bool is never a number
    "max_tokens": lambda v: v is None or (_integer(v) and 0 <= v <= MAX_TOKENS),
    "temperature": lambda v: v is None or (_number(v) and 0 <= v <= 100),
    "top_p": lambda v: v is None or (_number(v) and 0 < v <= 1),
    "top_k": lambda v: v is None or (_integer(v) and v >= 1),
    "n": lambda v: v is None or (_integer(v) and 1 <= v <= MAX_BATCH),
    "seed": lambda v: v is None or (_integer(v) and 0 <= v < 2**63),
    "stop": lambda v: v is None or _stops(v),
    "stream": lambda v: v is None or isinstance(v, bool),
    "echo": lambda v: v is None or isinstance(v, bool),
    "stream_options": lambda v: v is None,  # (any options only with stream: true, as OpenAI; the body has none)
    "user": lambda v: v is None or isinstance(v, str),
    "logprobs": lambda v: v is None,  # (a number only for scoring: echo with max_tokens 0)
    "frequency_penalty": lambda v: v is None or (_number(v) and v == 0),
    "presence_penalty": lambda v: v is None or (_number(v) and v == 0),
    "best_of": lambda v: v is None or (_integer(v) and v == 1),
    "logit_bias": lambda v: v is None or v == {},
    "suffix": lambda v: v is None or v == "",
}
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(-3, 50) | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([0.0, 1.0, 1e-300, 5e-324, 2**63, 2**63 - 1, -1, "", "1", "a", True, False]) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=6)


def _check_reply(served, trained_run, body, field, ok):
    status, headers, raw = post(served, body)
    if ok:
        assert status == 200, (body, raw[:300])
        if body.get("stream"):
            assert raw.rstrip().endswith(b"data: [DONE]") and b'"error"' not in raw
        else:
            reply = json.loads(raw)
            assert reply["object"] == "text_completion" and reply["model"] == trained_run.run_dir.name
            assert len(reply["choices"]) == len(body["prompt"] if isinstance(body["prompt"], list) else [0]) * \
                (body.get("n") or 1)
    else:
        assert status == 400, (body, status, raw[:300])
        assert openai_error(status, headers, raw)["param"] == field, (body, raw)


@FUZZ
@given(field=st.sampled_from(sorted(VALID)), value=json_values)
def test_every_field_takes_exactly_its_json_type(served, trained_run, field, value):
    """Was: `true` passed as n, max_tokens and seed; "stop": 5 was a 500; "stop": {"e": 1} used its keys."""
    body = {"prompt": "the", "max_tokens": 5, field: value}
    _check_reply(served, trained_run, body, field, VALID[field](value))


@FUZZ
@given(prompt=json_values | st.text("the cat", max_size=6) | st.lists(st.text("the cat", max_size=5), max_size=10),
       model_name=st.none() | st.just("served") | json_values)
def test_prompt_and_model_take_exactly_their_json_types(served, trained_run, model, prompt, model_name):
    served_name = trained_run.run_dir.name
    body = {"prompt": prompt, "max_tokens": 2}
    if model_name is not None:
        body["model"] = served_name if model_name == "served" else model_name
    prompts = [prompt] if isinstance(prompt, str) else prompt
    strings = isinstance(prompts, list) and len(prompts) > 0 and all(isinstance(p, str) for p in prompts)
    if model_name is not None and not isinstance(model_name, str):
        _check_reply(served, trained_run, body, "model", False)
    elif not strings:
        _check_reply(served, trained_run, body, "prompt", False)
    elif (body.get("model") or served_name) != served_name:  # ("" is the default model too)
        status, headers, raw = post(served, body)
        assert status == 404 and openai_error(status, headers, raw, "model_not_found")["param"] == "model"
    elif len(prompts) > MAX_BATCH:
        _check_reply(served, trained_run, body, "n", False)  # more choices than the batch holds
    else:
        _check_reply(served, trained_run, body, "prompt", not any(model.tokenizer.unknown(p) for p in prompts))


@FUZZ
@given(key=st.text(min_size=1, max_size=10), value=json_values)
def test_an_unknown_field_is_named(served, key, value):
    status, headers, raw = post(served, {"prompt": "the", key: value} if key != "prompt" else {"prompt": "the"})
    if key in VALID or key in ("prompt", "model"):
        assert status in (200, 400, 404)
    else:
        assert status == 400 and openai_error(status, headers, raw)["param"] == key


@FUZZ
@given(raw=st.binary(max_size=300) | st.text(max_size=80).map(lambda t: t.encode("utf-8"))
       | st.builds(lambda v, enc: json.dumps({"prompt": "the", "max_tokens": 3, "user": v}).encode(enc),
                   st.text(max_size=5), st.sampled_from(["utf-16", "utf-16-le", "utf-32", "utf-8-sig"])))
def test_garbage_bodies_are_400s_in_openais_json(served, raw):
    """Was: UTF-16 and UTF-32 bodies were guessed at and served; JSON must be UTF-8 (RFC 8259)."""
    status, headers, body = post(served, raw)
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=lambda c: 1 / 0)
        parsed = True
    except (ValueError, ZeroDivisionError):
        parsed = False
    if not parsed or not isinstance(data, dict):
        assert status == 400, (raw, body)
        openai_error(status, headers, body)
    else:
        assert status in (200, 400, 404), (raw, body)
        if status != 200:
            openai_error(status, headers, body)


CHAT_VALID = {**{k: v for k, v in VALID.items() if k not in ("echo", "best_of", "suffix", "logprobs")},
              "max_tokens": lambda v: v is None or (_integer(v) and 1 <= v <= MAX_TOKENS),  # (a chat answer: >= 1)
              "max_completion_tokens": lambda v: v is None or (_integer(v) and 1 <= v <= MAX_TOKENS),
              "logprobs": lambda v: v is None or v is False,
              "top_logprobs": lambda v: v is None or (_integer(v) and v == 0),
              "tools": lambda v: v is None or v == [],
              "tool_choice": lambda v: v is None or v in ("none", "auto"),
              "parallel_tool_calls": lambda v: v is None or isinstance(v, bool),
              "response_format": lambda v: v is None or v == {"type": "text"}}
CHAT = "/v1/chat/completions"


def _chat_text(messages):
    """What the chat endpoint must make of `messages` (OpenAI's shapes, the text parts charnn reads): the prompt,
    or None where it must answer 400 naming `messages`."""
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        return None
    texts = []
    for m in messages:
        role, content = m.get("role"), m.get("content")
        if m.get("tool_calls") not in (None, []) or m.get("function_call") is not None:
            return None  # (a tool call's neutral values only: absent, null, [])
        if set(m) - {"role", "content", "name", "tool_calls", "function_call", "refusal"}:
            return None
        if role not in ("system", "developer", "user", "assistant") or \
                not all(isinstance(m.get(key, ""), (str, type(None))) for key in ("name", "refusal")):
            return None
        if isinstance(content, list) and all(isinstance(part, dict) and set(part) == {"type", "text"}
                                             and part["type"] == "text" and isinstance(part["text"], str)
                                             for part in content):
            content = "".join(part["text"] for part in content)
        if content is None and role == "assistant":
            content = ""
        if not isinstance(content, str):
            return None
        texts.append(content)
    return "\n".join(texts) + ("" if messages[-1]["role"] == "assistant" else "\n")


messages_st = json_values | st.lists(st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "system", "developer", "tool", "bot"]) | json_values},
    optional={"content": st.text("the cat\n", max_size=6) | json_values
              | st.lists(st.fixed_dictionaries({"type": st.just("text") | json_values,
                                                "text": st.text("the ", max_size=4) | json_values}), max_size=3),
              "name": st.text(max_size=3) | json_values, "refusal": st.text(max_size=3) | json_values,
              "tool_calls": st.just([]) | json_values, "function_call": st.none() | json_values}), max_size=4)


@FUZZ
@given(messages=messages_st)
def test_chat_messages_take_exactly_their_shape(served, trained_run, model, messages):
    """A chat's messages: whatever JSON arrives is a 200 with one choice, or a 400 naming `messages`."""
    text = _chat_text(messages)
    status, headers, raw = post(served, {"messages": messages, "max_tokens": 3}, path=CHAT)
    if text is None or model.tokenizer.unknown(text):
        assert status == 400 and openai_error(status, headers, raw)["param"] == "messages", (messages, raw)
    else:
        reply = json.loads(raw)
        assert status == 200 and reply["object"] == "chat.completion", (messages, raw)
        assert len(reply["choices"]) == 1 and len(reply["choices"][0]["message"]["content"]) == 3


@FUZZ
@given(field=st.sampled_from(sorted(CHAT_VALID)), value=json_values, both=st.booleans())
def test_every_chat_field_takes_exactly_its_json_type(served, trained_run, field, value, both):
    """One field of any JSON value, the others valid; `both`: max_tokens and max_completion_tokens both sent, the
    other one valid (was: `true` passed beside 1, as Python's true == 1)."""
    body = {"messages": [{"role": "user", "content": "the"}], field: value}
    limits = ("max_tokens", "max_completion_tokens")
    if field not in limits:
        body["max_tokens"] = 5
    elif both and not _integer(value):  # (a non-integer beside a valid one: its own type is what is wrong)
        body[limits[field == "max_tokens"]] = 5
    status, headers, raw = post(served, body, path=CHAT)
    if CHAT_VALID[field](value) and body.get("stream"):
        assert status == 200 and raw.rstrip().endswith(b"data: [DONE]") and b'"error"' not in raw
    elif CHAT_VALID[field](value):
        assert status == 200 and len(json.loads(raw)["choices"]) == (body.get("n") or 1), (body, raw[:300])
    else:
        assert status == 400 and openai_error(status, headers, raw)["param"] == field, (body, raw[:300])


@pytest.mark.parametrize("raw, words", [
    (b'{"\\ud800": 1}', ["\\ud800"]),  # was a 500: UnicodeEncodeError writing the error that names the key
    (b'{"prompt": "the \\udfff"}', ["\\udfff"]),
    (b'{"prompt": "the", "stop": ["\\ud83d"]}', ["\\ud83d"]),
    (b"[" * 19000, ["nests deeper"]),  # was a plain-text 500: RecursionError in json.loads (100,000 deep)
    (b'{"prompt": ' + b"[" * 50 + b"]" * 50 + b"}", ["nests deeper"]),
    (b'{"prompt": "the", "temperature": NaN}', ["NaN"]),
    (b'{"prompt": "the", "top_p": Infinity}', ["Infinity"]),
    (b'{"prompt": "the", "max_tokens": ' + b"9" * 5000 + b"}", ["JSON"]),
    (json.dumps({"prompt": "the"}).encode("utf-16"), ["UTF-8"]),
    (b'{"prompt": "\xff\xfe"}', ["UTF-8"]),
    (b'{"prompt": "the", "stop": {"e": 1}}', ["stop"]),  # was: the object's keys used as stop strings
    (b'{"prompt": "the", "stop": 5}', ["stop"]),  # was a 500: 'int' object is not iterable
    (b'{"prompt": "the", "stream": "yes"}', ["stream"]),
    (b'{"prompt": "the", "n": 1.0}', ["n"]),
    (b'{"prompt": "the", "frequency_penalty": false}', ["frequency_penalty"]),
    (b'{"prompt": ["the"], "n": 3, "max_tokens": 2, "echo": true, "logprobs": 1}', ["logprobs"]),
])
def test_malformed_bodies_get_one_line_in_openais_json(served, raw, words):
    status, headers, body = post(served, raw)
    err = openai_error(status, headers, body)
    assert status == 400 and err["type"] == "invalid_request_error", (status, body)
    for w in words:
        assert w in err["message"], err


def test_sizes_and_lying_lengths(served):
    status, headers, raw = post(served, {"prompt": "t" * MAX_BODY})
    assert status == 413 and openai_error(status, headers, raw, "request_too_large")
    prompts = ["the"] * 2000  # within the body limit, far more choices than the batch
    status, headers, raw = post(served, {"prompt": prompts, "max_tokens": 1})
    assert status == 400 and openai_error(status, headers, raw)["param"] == "n"
    echo = {"prompt": "t" * (MAX_BODY - 2000), "max_tokens": 1, "echo": True}  # written back with every choice:
    status, headers, raw = post(served, {**echo, "n": 5})  # 90,000 characters, over 4 bodies' worth
    assert status == 400 and openai_error(status, headers, raw)["param"] == "echo"
    status, _, raw = post(served, {**echo, "n": 4})
    assert status == 200 and all(c["text"].startswith(echo["prompt"]) for c in json.loads(raw)["choices"])
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as s:  # says 100 bytes, sends 10
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100\r\n\r\n{\"prompt\":")
        started = time.time()
        status, headers, raw = _read_reply(s)
        assert status == 408 and openai_error(status, headers, raw, "request_timeout")
        assert time.time() - started < 5
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as s:  # Expect: 100-continue, too big:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Expect: 100-continue\r\nContent-Length: 60000\r\n\r\n")  # (the 413 at once, no 100 that
        status, headers, raw = _read_reply(s)  # asks for the body it refuses; curl sent it all, then got 413)
        assert status == 413 and openai_error(status, headers, raw, "request_too_large")
    for method in ("GET", "HEAD"):  # a 405 says what is allowed (RFC 9110; Starlette's own did, ours dropped it)
        with socket.create_connection(("127.0.0.1", served.port), timeout=10) as s:
            s.sendall(f"{method} /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            reply = s.recv(65536).decode("latin-1").lower()
            assert reply.startswith("http/1.1 405") and "\r\nallow: " in reply and "post" in reply.split("allow: ")[1]
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as s:  # not HTTP at all
        s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 hello\r\n\r\n")
        status, headers, raw = _read_reply(s)
        assert status == 400 and openai_error(status, headers, raw, "invalid_http_request")


def _read_reply(sock):
    """(status, headers, body) of one HTTP/1.1 reply with a Content-Length, read from a raw socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the server closed the connection without a reply: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(65536)
        assert chunk
        body += chunk
    return int(lines[0].split()[1]), headers, body


# --- 6. the most likely token survives top-p and top-k -------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(logits=st.lists(st.floats(-50, 50), min_size=2, max_size=12),
       top_k=st.none() | st.integers(1, 20), top_p=st.none() | st.sampled_from([1e-300, 5e-324, 1e-45, 1e-8, 0.3, 1.0])
       | st.floats(1e-320, 1.0))
def test_the_most_likely_token_survives_every_filter(logits, top_k, top_p):
    """Was: a top_p of 1e-300 is 0 in float32, every token was masked and token 0 was drawn."""
    from charnn.generation.draw import filter_logits

    x = torch.tensor([logits, logits[::-1]], dtype=torch.float32)
    kept = filter_logits(x, top_k, top_p)
    for row, out in zip(x, kept):
        assert out[row.argmax()] == row.max()  # the best token is untouched
        assert torch.isfinite(out).sum() >= 1


def test_tiny_top_p_and_temperature_draw_the_most_likely_token(model):
    """Through the Python API (what `charnn serve` runs): was 20 U+FFFD characters for top_p=1e-300, and the
    first token whose logit overflowed to +inf, not the most likely, for temperature=1e-300."""
    greedy = model.generate("the", length=40, temperature=0)
    for kw in (dict(top_p=1e-300), dict(top_p=5e-324), dict(temperature=1e-300), dict(temperature=1e-40),
               dict(top_k=1)):
        assert model.generate("the", length=40, seed=1, **kw) == greedy, kw


# --- 7. DNS rebinding: Host and Origin ----------------------------------------------------------------------

@pytest.mark.parametrize("host, status", [
    ("attacker.example:8011", 403), ("attacker.example", 403), ("127.0.0.1.attacker.example", 403),
    ("localhost.attacker.example", 403), ("sub.charnn.test", 403), ("models.test", 403), ("", 403),
    ("127.0.0.1:{port}", 200), ("localhost:{port}", 200), ("LOCALHOST", 200), ("app.localhost:{port}", 200),
    ("[::1]:{port}", 200), ("10.1.2.3", 200), ("charnn.test:{port}", 200), ("CHARNN.TEST.", 200),
    ("a.models.test", 200),
])
def test_only_loopback_names_ip_literals_and_allowed_hosts_are_answered(served, host, status):
    """Was: any Host was answered, so a page rebinding its own name to 127.0.0.1 could read completions."""
    for method, path, body in (("GET", "/health", None), ("POST", "/v1/completions", {"prompt": "the", "max_tokens": 2}),
                               ("GET", "/", None)):
        got, headers, raw = served.request(method, path, body, headers={"Host": host.format(port=served.port)})
        assert got == status, (host, path, got, raw[:200])
        if status == 403:
            err = openai_error(got, headers, raw, "host_not_allowed")
            assert "--allow-host" in err["message"] and "DNS rebinding" in err["message"]


@pytest.mark.parametrize("origin, status", [
    ("http://evil.example", 403), ("null", 403), ("http://localhost.evil.example:8000", 403),
    ("http://127.0.0.1:{port}", 200), ("http://127.0.0.1:5173", 200), ("http://app.test", 200),
    ("http://charnn.test", 200),
])
def test_another_sites_page_is_refused_by_its_origin(served, origin, status):
    got, headers, raw = served.request("POST", "/v1/completions", {"prompt": "the", "max_tokens": 2},
                                       headers={"Origin": origin.format(port=served.port)})
    assert got == status, (origin, raw[:200])
    if status == 403:
        assert "--cors-origin" in openai_error(got, headers, raw, "origin_not_allowed")["message"]


# --- 8. slow, idle and vanishing clients; too many connections -----------------------------------------------

def _closed_within(sock, seconds):
    """Seconds until the server closed `sock` (read to EOF, or a reset), or None after `seconds`."""
    sock.settimeout(0.1)
    started = time.time()
    while time.time() - started < seconds:
        try:
            if sock.recv(65536) == b"":
                return time.time() - started
        except socket.timeout:
            continue
        except ConnectionResetError:
            return time.time() - started
    return None


def test_idle_and_slow_header_connections_are_closed(served):
    """Was: a connection that sent nothing, or its headers a byte at a time, was held for ever."""
    silent = socket.create_connection(("127.0.0.1", served.port))
    slow = socket.create_connection(("127.0.0.1", served.port))
    slow.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    stop = threading.Event()

    def trickle():  # a header byte every 0.2 s: bytes keep coming, the head never completes
        while not stop.is_set():
            try:
                slow.sendall(b"X")
            except OSError:
                return
            time.sleep(0.2)

    t = threading.Thread(target=trickle)
    t.start()
    try:
        assert (_closed_within(silent, 5) or 99) < 3  # --timeout-headers 1
        assert (_closed_within(slow, 5) or 99) < 3
    finally:
        stop.set()
        t.join()
        silent.close()
        slow.close()
    kept = socket.create_connection(("127.0.0.1", served.port), timeout=10)  # after a reply: --timeout-keep-alive 1
    kept.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert _read_reply(kept)[0] == 200
    assert (_closed_within(kept, 5) or 99) < 3
    kept.close()


def test_past_the_connection_cap_a_503_and_after_the_idle_ones_close_service_again(served):
    idle = [socket.create_connection(("127.0.0.1", served.port)) for _ in range(MAX_CONNECTIONS)]
    try:
        time.sleep(0.2)
        status, headers, raw = served.request("GET", "/health")
        assert status == 503 and headers["retry-after"] == "1"
        assert "--max-connections" in openai_error(status, {k.lower(): v for k, v in headers.items()}, raw,
                                                   "too_many_connections")["message"]
        time.sleep(2.5)  # the idle ones time out (--timeout-headers 1)
        assert served.health()["status"] == "ok"
    finally:
        for s in idle:
            s.close()


def test_vanishing_clients_free_their_rows_and_connections(served):
    def reset(sock):  # gone without a goodbye: RST, not FIN
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()

    for _ in range(3):
        s = socket.create_connection(("127.0.0.1", served.port), timeout=10)
        body = json.dumps({"prompt": "the", "max_tokens": MAX_TOKENS, "n": 4, "stream": True}).encode()
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        assert s.recv(12).startswith(b"HTTP/1.1 200")
        reset(s)
        half = socket.create_connection(("127.0.0.1", served.port), timeout=10)  # half a body, then gone
        half.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 500\r\n\r\n{\"pro")
        reset(half)
    deadline = time.time() + 20
    while served.health()["active_rows"] and time.time() < deadline:
        time.sleep(0.05)
    assert served.health()["active_rows"] == 0
    status, _, raw = post(served, {"prompt": "the", "max_tokens": 7, "n": MAX_BATCH})
    assert status == 200 and len(json.loads(raw)["choices"]) == MAX_BATCH  # every row is free again


def test_a_reply_nobody_reads_is_dropped_after_the_write_timeout():
    """The transport's buffer stays full (the client reads nothing): the connection is aborted, so the app
    sees a disconnect, instead of waiting for ever."""

    import uvicorn

    from charnn.serve.limits import protocol

    class Transport:
        aborted = closing = False

        def get_extra_info(self, name, default=None):
            return ("127.0.0.1", 1) if name in ("sockname", "peername") else default

        def abort(self):
            self.aborted = True

        def close(self):
            self.closing = True

        def is_closing(self):
            return self.closing

    async def main():
        cls = protocol(max_connections=4, timeout_headers=30, timeout_write=0.2)
        proto = cls(uvicorn.Config(app=lambda *a: None), uvicorn.server.ServerState(), {})
        t = Transport()
        proto.connection_made(t)
        proto.pause_writing()  # the buffer is over its high-water mark
        await asyncio.sleep(0.4)
        assert t.aborted
        t2 = Transport()
        proto2 = cls(uvicorn.Config(app=lambda *a: None), uvicorn.server.ServerState(), {})
        proto2.connection_made(t2)
        proto2.pause_writing()
        await asyncio.sleep(0.1)
        proto2.resume_writing()  # the client read it in time
        await asyncio.sleep(0.3)
        assert not t2.aborted
        for pr in (proto, proto2):
            pr.connection_lost(None)

    asyncio.run(main())


def test_out_of_file_descriptors_it_refuses_logs_once_and_recovers(trained_run):
    """Was (ulimit -n 1024, 1,100 idle connections): every client locked out, even after the idle ones left,
    and the log flooded with `Too many open files` (54,000 lines in 6 s)."""
    limit = 200

    def low_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    from conftest import free_port
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "charnn", "serve", str(trained_run.run_dir), "--port", str(port),
                             "--device", "cpu", "--threads", "1", "--timeout-headers", "30"], preexec_fn=low_limit,
                            env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    socks = []
    try:
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.time() < deadline, "charnn serve never listened"
                time.sleep(0.1)
        time.sleep(0.5)
        for _ in range(limit + 60):  # more than the process may open: idle, holding their descriptors
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/health")
        r = conn.getresponse()
        assert r.status == 503 and json.loads(r.read())["error"]["code"] == "too_many_connections"
        conn.close()
        time.sleep(1.5)
        for s in socks:
            s.close()
        socks = []
        deadline = time.time() + 10
        while True:  # the server answers again once the idle connections are gone
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", "/health")
                r = conn.getresponse()
                if r.status == 200:
                    break
            except OSError:
                pass
            assert time.time() < deadline, "the server never answered again"
            time.sleep(0.2)
    finally:
        for s in socks:
            s.close()
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert err.count("out of system resource") <= 2 and len(err.splitlines()) < 100, err[-3000:]
    assert "connections at once, not 1000" in err  # the cap was lowered below the file limit, and said so


def test_one_client_address_cannot_take_every_connection():
    """Was: one address opening --max-connections connections locked every other client out (503 for all).
    Loopback peers (a local proxy's) are not counted."""
    import uvicorn

    from charnn.serve.limits import protocol

    class Transport:
        def __init__(self, host):
            self.host, self.sent, self.closing = host, b"", False

        def get_extra_info(self, name, default=None):
            return (self.host, 40000) if name == "peername" else ("127.0.0.1", 1) if name == "sockname" else default

        def write(self, data):
            self.sent += data

        def can_write_eof(self):
            return True

        def write_eof(self):
            self.closing = True

        def abort(self):
            self.closing = True

        def close(self):
            self.closing = True

        def is_closing(self):
            return self.closing

        def set_protocol(self, protocol):
            pass

    async def main():
        cls = protocol(max_connections=100, timeout_headers=30, timeout_write=30, per_client=2)
        state = uvicorn.server.ServerState()

        def connect(host):
            proto, t = cls(uvicorn.Config(app=lambda *a: None), state, {}), Transport(host)
            proto.connection_made(t)
            return proto, t

        first, second, third = (connect("203.0.113.5") for _ in range(3))
        assert not first[1].sent and not second[1].sent
        assert third[1].sent.startswith(b"HTTP/1.1 503") and b"--max-connections-per-client" in third[1].sent
        other = connect("198.51.100.7")  # another address still gets in
        local = [connect("127.0.0.1") for _ in range(5)]  # and loopback is not capped per address
        assert not other[1].sent and not any(t.sent for _, t in local)
        first[0].connection_lost(None)  # one closes: that address may connect once more
        again = connect("203.0.113.5")
        assert not again[1].sent
        for proto, _ in (second, third, other, again, *local):
            proto.connection_lost(None)
        assert cls.clients == {}
        # a refused client that is gone while the reply goes out (a reset: shutdown raises ENOTCONN) is let go
        # quietly; it was a traceback in the log per connection, which a connect-and-close loop turned into a flood
        full = protocol(max_connections=0, timeout_headers=30, timeout_write=30, per_client=2)
        proto, reset = full(uvicorn.Config(app=lambda *a: None), state, {}), Transport("203.0.113.9")
        reset.write_eof = lambda: (_ for _ in ()).throw(OSError(107, "Transport endpoint is not connected"))
        proto.connection_made(reset)
        assert reset.sent.startswith(b"HTTP/1.1 503") and reset.closing
        proto.connection_lost(None)

    asyncio.run(main())


def test_a_malformed_chunked_body_and_an_over_large_body_get_their_replies(served):
    """Was: a bad chunk closed the connection without a byte (the 400 was written only before a request's head);
    a client that wrote a whole over-large body before reading got a connection reset instead of the 413."""
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
        status, headers, raw = _read_reply(s)
        assert status == 400 and openai_error(status, headers, raw, "invalid_http_request")
    import urllib.error
    import urllib.request
    body = json.dumps({"prompt": "a" * (4 << 20)}).encode()  # (more than the sockets buffer: still sending)
    for _ in range(3):
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(urllib.request.Request(served.url + "/v1/completions", data=body), timeout=30)
        assert e.value.code == 413 and json.loads(e.value.read())["error"]["code"] == "request_too_large"


def test_a_scoring_request_whose_client_left_is_not_scored(trained_run, model):
    """Was: abandoned scoring requests each waited their turn and were scored, holding up the next client by
    seconds each; /health did not count them."""
    from charnn.serve.app import Server
    from charnn.serve.config import ServeConfig
    from charnn.serve.protocol import parse_request

    class Gone:
        async def is_disconnected(self):
            return True

    server = Server({"m": model}, ServeConfig())
    req = parse_request(json.dumps({"prompt": "the cat", "echo": True, "max_tokens": 0, "logprobs": 1}).encode(),
                        100, 8)
    scored = []
    model_scores = model.token_logprobs
    model.token_logprobs = lambda *a: scored.append(a) or model_scores(*a)

    async def main():
        gate = server.scoring.setdefault("m", asyncio.Semaphore(1))
        await gate.acquire()  # another request is being scored
        waiting = asyncio.ensure_future(server._score(Gone(), req, "m", model))
        await asyncio.sleep(0.05)
        health = json.loads((await server.health(None)).body)
        assert health["queued"] == 1  # it is counted while it waits
        response = await asyncio.wait_for(waiting, 5)
        gate.release()
        return response

    try:
        response = asyncio.run(main())
    finally:
        del model.token_logprobs
        server.close()
    assert response.status_code == 499 and not scored and server.scoring_waiting == {"m": 0}


def test_asyncio_words_for_a_client_gone_mid_write_are_said_and_kept_to_one_line_per_interval():
    """asyncio logs a bare `socket.send() raised exception.` per write to a reset connection (102 of them in a
    soak of 40k requests, naming nothing)."""
    import logging

    from charnn.serve.limits import OncePerInterval

    quiet = OncePerInterval(interval=60.0)
    records = [logging.LogRecord("asyncio", logging.WARNING, __file__, 1, "socket.send() raised exception.", (),
                                 None) for _ in range(5)]
    shown = [r.getMessage() for r in records if quiet.filter(r)]
    assert shown == ["a client went away before its answer was written (socket.send() raised exception.)"]
    other = logging.LogRecord("asyncio", logging.WARNING, __file__, 1, "something %s", ("else",), None)
    assert quiet.filter(other) and other.getMessage() == "something else"
    quiet.interval = 0.0
    later = logging.LogRecord("asyncio", logging.WARNING, __file__, 1, "socket.send() raised exception.", (), None)
    assert quiet.filter(later) and later.getMessage().endswith("(4 more like it since the last one)")
