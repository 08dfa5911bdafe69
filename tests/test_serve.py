"""`charnn serve` as clients meet it: a real uvicorn server in a subprocess on a free port, driven by the official
`openai` client and by raw HTTP (exact SSE bytes, error shapes), with concurrent and disconnecting clients."""

import asyncio
import http.client
import json
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
import torch
from conftest import asgi_post, free_port, one_line_error, subprocess_env

from charnn.api.params import ParamError
from charnn.text.tokenizer import start_id

openai = pytest.importorskip("openai", reason="the openai client is in the dev extra: pip install -e '.[dev]'")
pytest.importorskip("uvicorn", reason="charnn serve needs the serve extra: pip install -e '.[serve]'")


class Served:
    """A `charnn serve` subprocess and the ways to talk to it."""

    def __init__(self, run_dir, *flags, host="127.0.0.1"):
        self.port, self.host = free_port(), host
        self.proc = subprocess.Popen([sys.executable, "-m", "charnn", "serve", str(run_dir), "--host", host,
                                      "--port", str(self.port), "--device", "cpu", "--threads", "1", *flags],
                                     env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"charnn serve exited: {self.proc.stderr.read()}")
            try:
                urllib.request.urlopen(self.url + "/health", timeout=2).read()
                return
            except OSError:
                time.sleep(0.1)
        self.close()
        raise AssertionError("charnn serve never answered /health")

    def client(self, key="unused"):
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0)

    def request(self, method, path, body=None, headers=None):
        """(status, headers, body bytes) of one raw request."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        r = conn.getresponse()
        out = (r.status, dict(r.getheaders()), r.read())
        conn.close()
        return out

    def health(self):
        return json.loads(urllib.request.urlopen(self.url + "/health", timeout=10).read())

    def close(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="module")
def server(trained_run):
    s = Served(trained_run.run_dir, "--max-batch", "32", "--max-tokens-limit", "1000000", "--max-body-bytes", "4000",
               "--max-score-tokens", "1000")
    yield s
    s.close()


@pytest.fixture(scope="module")
def model(trained_run):
    import charnn
    return charnn.load(trained_run.run_dir, device="cpu")


def name(trained_run):
    return trained_run.run_dir.name


def test_plain_completion_through_the_openai_client(server, trained_run, model):
    r = server.client().completions.create(model=name(trained_run), prompt="the cat", max_tokens=60, seed=5)
    assert r.object == "text_completion" and r.model == name(trained_run) and len(r.choices) == 1
    c = r.choices[0]
    assert len(c.text) == 60 and c.finish_reason == "length" and c.index == 0
    assert r.usage.prompt_tokens == 7 and r.usage.completion_tokens == 60 and r.usage.total_tokens == 67
    assert c.text == model.generate("the cat", length=60, seed=5)  # the server runs the Python API's code


def test_seed_reproduces_and_streaming_gives_the_same_text(server, trained_run):
    client, kw = server.client(), dict(model=name(trained_run), prompt="the", max_tokens=120, temperature=0.9)
    a = client.completions.create(seed=11, **kw).choices[0].text
    assert a == client.completions.create(seed=11, **kw).choices[0].text
    assert a != client.completions.create(seed=12, **kw).choices[0].text
    chunks = list(client.completions.create(seed=11, stream=True, stream_options={"include_usage": True}, **kw))
    text = "".join(ch.choices[0].text for ch in chunks if ch.choices)
    assert text == a and len(chunks) > 2  # streamed in pieces, the same text
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices]
    assert finishes[-1] == "length" and set(finishes[:-1]) == {None}
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 120


def test_n_choices_stop_and_top_k(server, trained_run):
    client = server.client()
    r = client.completions.create(model=name(trained_run), prompt="the", max_tokens=80, n=3, seed=2, stop=["a", "\n"])
    assert sorted(c.index for c in r.choices) == [0, 1, 2]
    assert len({c.text for c in r.choices}) == 3  # three different draws
    for c in r.choices:
        assert "a" not in c.text and "\n" not in c.text  # cut before the stop string, which is left out
        assert c.finish_reason == ("stop" if len(c.text) < 80 else "length")
    assert any(c.finish_reason == "stop" for c in r.choices)
    # usage: each choice's characters and its stop (one character), not the tokens drawn past it in its block
    assert r.usage.completion_tokens == sum(len(c.text) + (c.finish_reason == "stop") for c in r.choices)
    greedy = client.completions.create(model=name(trained_run), prompt="the", max_tokens=50, temperature=0)
    top1 = client.completions.create(model=name(trained_run), prompt="the", max_tokens=50, seed=9,
                                     extra_body={"top_k": 1})
    assert top1.choices[0].text == greedy.choices[0].text  # top_k=1 arrived: only the most likely token is left
    free = client.completions.create(model=name(trained_run), prompt="the", max_tokens=50, seed=9)
    assert free.choices[0].text != greedy.choices[0].text


def test_list_prompts_echo_and_models(server, trained_run):
    client = server.client()
    r = client.completions.create(model=name(trained_run), prompt=["the cat", "a dog"], max_tokens=10, n=2, seed=1,
                                  echo=True)
    assert [c.index for c in sorted(r.choices, key=lambda c: c.index)] == [0, 1, 2, 3]
    texts = [c.text for c in sorted(r.choices, key=lambda c: c.index)]
    assert [t[:-10] for t in texts] == ["the cat", "the cat", "a dog", "a dog"]
    ids = [m.id for m in client.models.list().data]
    assert ids == [name(trained_run)]


def test_scoring_returns_the_prompts_log_probabilities(server, trained_run, model):
    text = "the cat sat on the mat"
    r = server.client().completions.create(model=name(trained_run), prompt=text, max_tokens=0, echo=True, logprobs=1)
    lp = r.choices[0].logprobs
    assert r.choices[0].text == text and lp.tokens == list(text)
    assert lp.text_offset == list(range(len(text)))
    ids = torch.from_numpy(model.tokenizer.encode(text))[None]
    start = torch.tensor([[start_id(model.tokenizer)]])  # the first character is conditioned on it, as in eval
    with torch.no_grad():
        ref = torch.log_softmax(model.net(torch.cat([start, ids[:, :-1]], 1))[0][0], -1).gather(1, ids[0, :, None])
    assert lp.token_logprobs == pytest.approx(ref[:, 0].tolist(), abs=1e-5)
    # logprobs: N gives the N most likely tokens and the text's own (up to N + 1, as OpenAI); it gave one always
    with torch.no_grad():
        all_lp = torch.log_softmax(model.net(torch.cat([start, ids[:, :-1]], 1))[0][0], -1)
    for n in (0, 3, 5):
        r = server.client().completions.create(model=name(trained_run), prompt=text, max_tokens=0, echo=True,
                                               logprobs=n)
        for i, top in enumerate(r.choices[0].logprobs.top_logprobs):
            best = all_lp[i].topk(n).indices.tolist() if n else []
            assert set(top) == {model.tokenizer.decode([b]) for b in best} | {text[i]}, (n, i, top)
            assert top[text[i]] == pytest.approx(float(all_lp[i, ids[0, i]]), abs=1e-5)
    # n choices per prompt, prompt by prompt (n was ignored: one choice); the prompt's tokens counted once
    r = server.client().completions.create(model=name(trained_run), prompt=[text, "a dog"], max_tokens=0, echo=True,
                                           logprobs=0, n=2)
    got = sorted(r.choices, key=lambda c: c.index)
    assert [c.index for c in got] == [0, 1, 2, 3] and [c.text for c in got] == [text, text, "a dog", "a dog"]
    assert got[0].logprobs.token_logprobs == got[1].logprobs.token_logprobs
    assert r.usage.prompt_tokens == len(text) + len("a dog")


def test_unknown_model_is_a_404_in_openais_shape(server, trained_run):
    with pytest.raises(openai.NotFoundError) as e:
        server.client().completions.create(model="no-such-model", prompt="x", max_tokens=3)
    assert e.value.body["code"] == "model_not_found" and "no-such-model" in e.value.body["message"]
    status, _, body = server.request("POST", "/v1/completions", {"model": "no-such-model", "prompt": "x"})
    err = json.loads(body)["error"]
    assert status == 404 and set(err) == {"message", "type", "param", "code"} and err["param"] == "model"


@pytest.mark.parametrize("body, status, param, words", [
    ({"prompt": "the \u00e9\u00df cat"}, 400, "prompt", ["'\u00e9'", "'\u00df'"]),  # names the missing characters
    ({"prompt": "the", "max_tokens": 2000000}, 400, "max_tokens", ["1000000"]),
    ({"prompt": "the", "temperature": -1}, 400, "temperature", ["temperature"]),
    ({"prompt": "the", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop", ["4"]),
    ({"prompt": "the", "top_p": 0}, 400, "top_p", ["top_p"]),
    ({"prompt": "the", "n": True}, 400, "n", ["got true"]),  # JSON's spelling, not Python's (got True)
    ({"prompt": "the", "seed": "7"}, 400, "seed", ['got "7"']),
    ({"prompt": [1, 2, 3]}, 400, "prompt", ["token ids"]),
    ({"prompt": "the", "file": "/etc/passwd"}, 400, "file", ["file"]),  # nothing makes the server read a file
    ({"prompt": "x" * 5000}, 413, None, ["4,000 bytes"]),
    ({"prompt": "the", "suffix": 1}, 400, "suffix", ["suffix"]),
    ({"prompt": "the", "logit_bias": 1}, 400, "logit_bias", ["logit_bias"]),
    ({"prompt": "the", "best_of": 3}, 400, "best_of", ["best_of"]),
    ({"prompt": "the", "stream_options": {"include_usage": True}}, 400, "stream_options", ["stream: true"]),
    ({"prompt": "the", "echo": True, "max_tokens": 0, "logprobs": 6}, 400, "logprobs", ["0 to 5"]),  # OpenAI's
    ({"prompt": ["the cat " * 70] * 2, "echo": True, "max_tokens": 0, "logprobs": 1}, 400, "prompt",
     ["1,120 tokens", "1,000", "charnn eval"]),  # --max-score-tokens: over all the prompts of a request
])
def test_request_errors_are_openai_json(server, body, status, param, words):
    got, headers, raw = server.request("POST", "/v1/completions", body)
    err = json.loads(raw)["error"]
    assert got == status and headers["content-type"] == "application/json"
    assert set(err) == {"message", "type", "param", "code"} and err["param"] == param
    for w in words:
        assert w in err["message"], err


def test_exact_server_sent_event_bytes(server, trained_run):
    body = {"model": name(trained_run), "prompt": "the", "max_tokens": 30, "seed": 4, "stream": True}
    status, headers, raw = server.request("POST", "/v1/completions", body)
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    events = raw.decode().split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]  # the stream ends with [DONE] and a blank line
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert all(e.startswith("data: {") for e in events[:-2])
    for ch in chunks:
        assert set(ch) == {"id", "object", "created", "model", "choices"} and ch["object"] == "text_completion"
        assert [set(c) for c in ch["choices"]] == [{"text", "index", "logprobs", "finish_reason"}]
    assert len({ch["id"] for ch in chunks}) == 1
    assert [ch["choices"][0]["finish_reason"] for ch in chunks][-1] == "length"
    assert "".join(ch["choices"][0]["text"] for ch in chunks) == \
        server.client().completions.create(**{k: v for k, v in body.items() if k != "stream"}).choices[0].text


def test_chat_completions_continue_the_messages_as_text(server, trained_run):
    """/v1/chat/completions through the openai client: the messages' text, one message a line, is the prompt and
    the reply starts on the next line (greedy, the same text as /v1/completions of that prompt); a last assistant
    message is continued; content as text parts; max_completion_tokens; n choices."""
    client, model_name = server.client(), name(trained_run)
    messages = [{"role": "system", "content": "the cat"}, {"role": "user", "content": "sat on"}]

    def completion(prompt, n):
        return client.completions.create(model=model_name, prompt=prompt, max_tokens=n, temperature=0).choices[0].text
    r = client.chat.completions.create(model=model_name, messages=messages, max_tokens=40, temperature=0)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-") and r.model == model_name
    c = r.choices[0]
    assert c.message.role == "assistant" and c.finish_reason == "length" and c.index == 0 and c.logprobs is None
    assert c.message.content == completion("the cat\nsat on\n", 40)
    assert r.usage.prompt_tokens == len("the cat\nsat on\n") and r.usage.completion_tokens == 40
    parts = [{"role": "user", "content": [{"type": "text", "text": "the "}, {"type": "text", "text": "cat"}]},
             {"role": "assistant", "content": "a dog"}]  # the assistant's turn is continued, not closed
    r = client.chat.completions.create(model=model_name, messages=parts, max_completion_tokens=25, temperature=0)
    assert r.choices[0].message.content == completion("the cat\na dog", 25)
    r = client.chat.completions.create(model=model_name, messages=messages, max_tokens=30, n=3, seed=4, stop=["\n"])
    assert sorted(c.index for c in r.choices) == [0, 1, 2] and len({c.message.content for c in r.choices}) == 3
    assert all("\n" not in c.message.content for c in r.choices)
    unlimited = client.chat.completions.create(model=model_name, messages=messages, seed=1)  # (no max_tokens)
    assert len(unlimited.choices[0].message.content) == 256  # protocol.DEFAULT_CHAT_MAX_TOKENS


def test_chat_streams_deltas_a_role_first_and_usage_last(server, trained_run):
    client, kw = server.client(), dict(model=name(trained_run), messages=[{"role": "user", "content": "the"}],
                                       max_tokens=60, temperature=0.8, seed=6, n=2)
    whole = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    assert all(ch.object == "chat.completion.chunk" and ch.id == chunks[0].id for ch in chunks)
    assert [[(c.index, c.delta.role, c.delta.content) for c in ch.choices] for ch in chunks[:2]] == [
        [(0, "assistant", "")], [(1, "assistant", "")]]  # (one chunk a choice, as OpenAI's)
    texts, finish = ["", ""], [None, None]
    for ch in chunks[2:-1]:
        for c in ch.choices:
            assert c.delta.role is None and finish[c.index] is None
            assert (c.delta.content is None) == (c.finish_reason is not None)  # (OpenAI's: the reason comes alone)
            texts[c.index] += c.delta.content or ""
            finish[c.index] = c.finish_reason
    assert texts == [c.message.content for c in sorted(whole.choices, key=lambda c: c.index)]
    assert finish == ["length", "length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 120
    status, headers, raw = server.request("POST", "/v1/chat/completions", {**kw, "stream": True, "n": 1})
    events = raw.decode().split("\n\n")
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    assert events[-2:] == ["data: [DONE]", ""]
    for e in events[:-2]:
        ch = json.loads(e.removeprefix("data: "))
        assert set(ch) == {"id", "object", "created", "model", "choices"}
        assert [set(c) for c in ch["choices"]] == [{"index", "delta", "logprobs", "finish_reason"}]


@pytest.mark.parametrize("body, param, words", [
    ({"messages": []}, "messages", ["non-empty array"]),
    ({"messages": "the"}, "messages", ["array"]),
    ({"messages": [{"role": "user"}]}, "messages", ["messages[0].content"]),
    ({"messages": [{"role": "bot", "content": "x"}]}, "messages", ["messages[0].role", "user"]),
    ({"messages": [{"role": "user", "content": "x", "extra": 1}]}, "messages", ["'extra'"]),
    ({"messages": [{"role": "tool", "content": "x", "tool_call_id": "1"}]}, "messages", ["tool"]),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x"}}]}]},
     "messages", ["text parts"]),
    ({"messages": [{"role": "user", "content": "the \u00e9 cat"}]}, "messages", ["'\u00e9'"]),
    ({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}, "tools", ["tools"]),
    ({"messages": [{"role": "user", "content": "x"}], "logprobs": True}, "logprobs", ["/v1/completions"]),
    ({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"}},
     "response_format", ["text"]),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 3, "max_completion_tokens": 4},
     "max_completion_tokens", ["differ"]),
    ({"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 2000000}, "max_completion_tokens",
     ["1000000"]),
    ({"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 1, "max_tokens": True}, "max_tokens",
     ["integer"]),  # (was: true == 1, so the two "agreed")
    ({"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 5.0, "max_tokens": 5},
     "max_completion_tokens", ["integer"]),
    ({"messages": [{"role": "assistant", "content": "x", "refusal": 5}]}, "messages", ["messages[0].refusal"]),
    ({"messages": [{"role": "user", "content": "x", "name": ["a"]}]}, "messages", ["messages[0].name"]),
    ({"messages": [{"role": "user", "content": "x", "tool_calls": 0}]}, "messages", ["tool"]),
    ({"messages": [{"role": "user", "content": "x", "function_call": ""}]}, "messages", ["function"]),
    ({"messages": [{"role": "user", "content": "x"}], "tool_choice": "required"}, "tool_choice", ["no tools"]),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens", [">= 1"]),
    ({"messages": [{"role": "user", "content": "x"}], "prompt": "the"}, "prompt", ["unknown"]),
    ({"messages": [{"role": "user", "content": "x"}], "echo": True}, "echo", ["unknown"]),
])
def test_chat_request_errors_name_their_field(server, body, param, words):
    got, headers, raw = server.request("POST", "/v1/chat/completions", body)
    err = json.loads(raw)["error"]
    assert got == 400 and headers["content-type"] == "application/json" and err["param"] == param
    for w in words:
        assert w in err["message"], err


def test_an_absent_max_tokens_is_its_default_or_the_servers_limit_if_lower():
    """A server whose --max-tokens-limit is below the default answers up to its limit (as llama.cpp's --n-predict
    caps a request's): it refused every request without max_tokens, naming a value the client never sent."""
    from charnn.serve.protocol import DEFAULT_CHAT_MAX_TOKENS, DEFAULT_MAX_TOKENS, parse_chat, parse_request

    chat = json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode()
    assert parse_request(b'{"prompt": "x"}', 1000, 4).params.length == DEFAULT_MAX_TOKENS == 16
    assert parse_request(b'{"prompt": "x"}', 8, 4).params.length == 8
    assert parse_chat(chat, 1000, 4).params.length == DEFAULT_CHAT_MAX_TOKENS == 256
    assert parse_chat(chat, 100, 4).params.length == 100
    with pytest.raises(ParamError, match="at most 8"):  # (one asked for is still refused past the limit)
        parse_request(b'{"prompt": "x", "max_tokens": 9}', 8, 4)


@pytest.mark.parametrize("chars,joined", [("abcdehtk ", "the cat "), ("abcdehtk", "thecat")])
def test_a_model_without_line_breaks_chats_with_spaces_between_messages(tmp_path, chars, joined):
    """A model trained on text with no newline cannot read one: its chat prompt joins the messages with spaces, or
    with nothing where it has no space either (never a 400 about a character the client did not send)."""
    from charnn.api.model import Model
    from charnn.config import ModelConfig
    from charnn.models.lm import CharRNN
    from charnn.serve.app import create_app
    from charnn.serve.config import ServeConfig
    from charnn.text.tokenizer import CharTokenizer

    torch.manual_seed(0)
    tok = CharTokenizer(list(chars))
    model = Model(CharRNN(ModelConfig(vocab_size=tok.vocab_size, layers=1, hidden=16, embed=8)), tok,
                  torch.device("cpu"), tmp_path / "flat.pt")
    chat = {"model": "flat", "messages": [{"role": "user", "content": "the"}, {"role": "user", "content": "cat"}],
            "max_tokens": 30, "temperature": 0}
    app = create_app({"flat": model}, ServeConfig())
    status, body = asyncio.run(asgi_post(app, "/v1/chat/completions", chat))
    assert status == 200, body
    assert json.loads(body)["choices"][0]["message"]["content"] == model.generate(joined, length=30, temperature=0)
    chat["messages"][0]["content"] = "the\n"  # (what the client sent is still checked)
    status, body = asyncio.run(asgi_post(app, "/v1/chat/completions", chat))
    assert status == 400 and json.loads(body)["error"]["param"] == "messages"


def test_sixteen_concurrent_streams_get_their_lengths(server, trained_run):
    results, errors = {}, []

    def run(i):
        try:
            stream = server.client().completions.create(model=name(trained_run), prompt="the", max_tokens=100 + 7 * i,
                                                        stream=True, seed=i)
            results[i] = "".join(ch.choices[0].text for ch in stream if ch.choices)
        except Exception as e:  # reported below, with the others
            errors.append(repr(e))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    busy = server.health()  # /health answers while the batch is busy
    for t in threads:
        t.join(120)
    assert not errors and busy["status"] == "ok"
    assert {i: len(t) for i, t in results.items()} == {i: 100 + 7 * i for i in range(16)}
    assert server.health()["active_rows"] == 0


def _wait_for(predicate, what, timeout=30.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"never: {what}")


def test_a_disconnected_client_frees_its_row(server, trained_run):
    body = {"model": name(trained_run), "prompt": "the", "max_tokens": 1000000, "stream": True, "n": 2}
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("POST", "/v1/completions", body=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    assert r.status == 200 and r.read(7) == b"data: {"  # generating
    assert server.health()["active_rows"] == 2
    r.close()
    conn.close()
    _wait_for(lambda: server.health()["active_rows"] == 0, "the rows were freed after the client left")


def test_a_non_streaming_client_that_leaves_frees_its_rows(server, trained_run):
    body = {"model": name(trained_run), "prompt": "the", "max_tokens": 1000000, "n": 2}
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("POST", "/v1/completions", body=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    _wait_for(lambda: server.health()["active_rows"] == 2, "the rows were generating")
    conn.close()  # gone while its rows still deliver pieces every block
    _wait_for(lambda: server.health()["active_rows"] == 0, "the rows were freed after the client left")


def test_no_cors_headers_unless_asked_for(server):
    _, headers, _ = server.request("GET", "/v1/models", headers={"Origin": "http://app.test"})
    assert not any(h.lower().startswith("access-control-") for h in headers)


def test_the_playground_page_is_self_contained(server):
    status, headers, raw = server.request("GET", "/")
    page = raw.decode()
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert "/v1/completions" in page and 'id="go"' in page and 'id="stop"' in page and "chars/s" in page
    assert "http://" not in page and "https://" not in page and "<link" not in page  # nothing fetched from elsewhere
    for path in ("/nowhere", "/v1/completions/", "/v1/chat/completions/"):  # (a trailing slash: an empty 307)
        status, _, raw = server.request("POST" if "compl" in path else "GET", path, {"prompt": "a"})
        assert status == 404 and json.loads(raw)["error"]["code"] == "not_found", path


def test_a_key_guards_everything_but_health_and_a_full_server_answers_503(trained_run):
    s = Served(trained_run.run_dir, "--api-key", "sesame", "--max-batch", "1", "--max-queue", "0",
               "--max-tokens-limit", "1000000", "--cors-origin", "http://app.test", f"second={trained_run.run_dir / 'last.pt'}", host="0.0.0.0")
    try:
        preflight = {"Origin": "http://app.test", "Access-Control-Request-Method": "POST",
                     "Access-Control-Request-Headers": "authorization,content-type"}
        status, headers, _ = s.request("OPTIONS", "/v1/completions", headers=preflight)
        assert status == 200 and headers["access-control-allow-origin"] == "http://app.test"
        status, headers, _ = s.request("OPTIONS", "/v1/completions", headers={**preflight, "Origin": "http://evil.test"})
        assert "access-control-allow-origin" not in headers
        stainless = {**preflight, "Access-Control-Request-Headers": "authorization,content-type,x-stainless-os"}
        status, headers, _ = s.request("OPTIONS", "/v1/completions", headers=stainless)  # openai-node in a page
        assert status == 200 and "x-stainless-os" in headers["access-control-allow-headers"].lower()
        with pytest.raises(openai.AuthenticationError):
            s.client("wrong").models.list()
        status, _, raw = s.request("POST", "/v1/completions", {"prompt": "the"})
        assert status == 401 and json.loads(raw)["error"]["code"] == "invalid_api_key"
        assert s.health()["status"] == "ok"  # /health stays open
        for auth, status in (("bearer sesame", 200), ("BEARER sesame", 200), ("Bearer sesam", 401), ("sesame", 401)):
            assert s.request("GET", "/v1/models", headers={"Authorization": auth})[0] == status, auth  # (RFC 9110)
        client = s.client("sesame")
        served = name(trained_run)
        assert [m.id for m in client.models.list().data] == [served, "second"]  # several models, by name
        assert len(client.completions.create(model="second", prompt="the", max_tokens=7).choices[0].text) == 7
        assert client.completions.create(model=served, prompt="the", max_tokens=5).choices[0].finish_reason == "length"
        stream = client.completions.create(model=served, prompt="the", max_tokens=1000000, stream=True)  # minutes
        next(iter(stream))  # the one row is taken
        status, headers, raw = s.request("POST", "/v1/completions", {"prompt": "the"},
                                         {"Authorization": "Bearer sesame"})
        assert status == 503 and headers["retry-after"] == "1"
        assert json.loads(raw)["error"]["code"] == "overloaded"
        stream.close()
        _wait_for(lambda: s.health()["active_rows"] == 0, "the row was freed")
    finally:
        s.close()


def test_a_non_loopback_bind_without_a_key_is_refused(trained_run):
    from typer.testing import CliRunner

    from charnn.cli import app
    r = CliRunner().invoke(app, ["serve", str(trained_run.run_dir), "--host", "0.0.0.0", "--port", "1"])
    one_line_error(r, 2, "--api-key", "0.0.0.0")
    for flags, words in ((["--max-batch", str(2**63)], "at most 4,096"),  # (a traceback after the port was bound)
                         (["--api-key", "two\nlines"], "printable ASCII"), (["--api-key", "clé"], "printable ASCII"),
                         # (an origin with a path or a trailing slash matched no browser's Origin, without a word)
                         # (--max-queue -1 beside them: without the check the test fails rather than serves)
                         (["--cors-origin", "abc", "--max-queue", "-1"], "scheme://host[:port]"),
                         (["--cors-origin", "https://app.test/", "--max-queue", "-1"], "no path")):
        one_line_error(CliRunner().invoke(app, ["serve", str(trained_run.run_dir), "--port", "1", *flags]), 2, words)
    from charnn.errors import ConfigError
    from charnn.serve.config import ServeConfig, bare_host
    assert ServeConfig(cors_origins=("*", "null", "http://localhost:3000", "https://a.b")).validate()  # (null: what
    for origin in ("HTTP://LOCALHOST:3000", "http://user@h"):  # a file:// page sends, and the guard's advice)
        with pytest.raises(ConfigError, match="lowercase with no path"):  # (no browser sends these)
            ServeConfig(cors_origins=(origin,)).validate()
    assert bare_host("[localhost]") == "[localhost]"  # (brackets hold IPv6 addresses only)
    assert (bare_host("[::1]"), bare_host("::1"), bare_host("localhost")) == ("::1", "::1", "localhost")  # ([::1]
    # was "not an address this machine can resolve", though URLs write it so)
    for host in ("a" * 70, "a..b"):  # (the idna codec's traceback, as the server began to listen)
        one_line_error(CliRunner().invoke(app, ["serve", str(trained_run.run_dir), "--port", "0", "--host", host,
                                                "--insecure"]), 1, "not a valid host name")


def test_a_failing_generation_step_fails_its_requests_and_the_engine_carries_on(trained_run, monkeypatch):
    import asyncio

    import charnn
    from charnn.sampling import SamplingParams
    from charnn.generation.batcher import RowSpec
    from charnn.serve.engine import FAILED, Engine, Job

    engine = Engine(charnn.load(trained_run.run_dir, device="cpu"), max_batch=4, max_queue=4)

    async def run(specs):
        job = Job(specs, asyncio.get_running_loop())
        engine.submit(job)
        updates = []
        while not any(u[2] for u in updates):
            updates += await asyncio.wait_for(job.updates.get(), 60)
        return updates

    try:
        real = engine.batcher.step
        monkeypatch.setattr(engine.batcher, "step", lambda tokens=1: 1 / 0)
        failed = asyncio.run(run([RowSpec("the", 50, SamplingParams(seed=1))]))
        assert failed[-1][0] == -1 and failed[-1][2] == FAILED and "ZeroDivisionError" in failed[-1][1]
        assert engine.batcher.active == 0 and engine.rows_reserved == 0
        monkeypatch.setattr(engine.batcher, "step", real)
        done = asyncio.run(run([RowSpec("the", 5, SamplingParams(seed=1))]))  # the next request is served as usual
        assert "".join(u[1] for u in done) == charnn.load(trained_run.run_dir, device="cpu").generate(
            "the", length=5, seed=1) and done[-1][2] == "length"
    finally:
        engine.close()


def test_a_queued_request_whose_client_left_gives_its_place_back_at_once(trained_run):
    """A job cancelled while it waits (its client gave up) leaves the queue then, not when it reaches the head:
    it kept counting against --max-queue, so a server whose clients time out and retry answered 503s."""
    import asyncio

    import charnn
    from charnn.sampling import SamplingParams
    from charnn.generation.batcher import RowSpec
    from charnn.serve.engine import Busy, Engine, Job

    engine = Engine(charnn.load(trained_run.run_dir, device="cpu"), max_batch=1, max_queue=2)
    loop = asyncio.new_event_loop()
    try:
        jobs = [Job([RowSpec("the", n, SamplingParams(seed=1))], loop) for n in (10**9, 5, 5, 5)]
        engine.submit(jobs[0])  # takes the row
        _wait_for(lambda: engine.active_rows == 1, "the first job runs")
        engine.submit(jobs[1])  # two wait
        engine.submit(jobs[2])
        assert engine.queued == 2 and engine.rows_reserved == 3
        with pytest.raises(Busy):
            engine.submit(jobs[3])
        engine.cancel(jobs[2])  # the last in the queue leaves: its place is free now
        assert engine.queued == 1 and engine.rows_reserved == 2
        engine.submit(jobs[3])
        engine.cancel(jobs[1])
        engine.cancel(jobs[1])  # (twice: no effect)
        assert [j for j in engine.waiting] == [jobs[3]] and engine.rows_reserved == 2
        engine.cancel(jobs[0])  # the running one frees its row, and the waiting one runs
        _wait_for(lambda: engine.queued == 0 and engine.rows_reserved == 0 and engine.active_rows == 0, "drained")
    finally:
        engine.close()
        loop.close()


def test_served_names_come_from_run_folders_or_name_equals_path(trained_run):
    from charnn.errors import CharnnError
    from charnn.serve.server import load_models

    run = trained_run.run_dir
    assert list(load_models([str(run), f"b={run / 'last.pt'}"], "cpu")) == [run.name, "b"]
    served = load_models([str(run)], "cpu", int8=True)[run.name]  # --int8: the batch loop's stepper is int8
    assert served.int8 and served.batcher(4).stepper.kernel != "fp32"
    with pytest.raises(CharnnError, match="NAME=PATH"):
        load_models([str(run), str(run / "best.pt")], "cpu")


def test_a_taken_port_is_one_line(trained_run):
    import socket

    from typer.testing import CliRunner

    from charnn.cli import app
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        r = CliRunner().invoke(app, ["serve", str(trained_run.run_dir), "--port", str(taken.getsockname()[1])])
    one_line_error(r, 1, "in use", "--port")


@pytest.mark.parametrize("module", ["uvicorn", "starlette"])
def test_without_the_serve_extra_it_is_one_line_naming_it(trained_run, module):
    code = (f"import sys; sys.modules[{module!r}] = None; sys.argv = ['charnn', 'serve', {str(trained_run.run_dir)!r}]; "
            "from charnn.cli import main; main()")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(), timeout=120)
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.strip() == f"charnn: error: charnn serve needs the serve extra ({module} is missing): " \
                               "pip install 'charnn[serve]'"


def test_a_client_that_leaves_while_sending_its_body_leaves_no_traceback(trained_run):
    import socket
    s = Served(trained_run.run_dir)
    try:
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", s.port), timeout=10) as c:
                c.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                          b"Content-Length: 100\r\n\r\n{\"pro")
            time.sleep(0.2)
        assert s.health()["status"] == "ok"
    finally:
        s.close()
    log = s.proc.stderr.read()
    assert "Traceback" not in log and "ClientDisconnect" not in log, log


def test_a_scoring_answer_is_written_in_pieces_that_join_to_json_dumps():
    """One json.dumps of a 100,000-token scoring answer held the GIL for 0.4 s (18 MB): every stream and /health
    stood still meanwhile, though it ran in a thread. The answer is now written a few thousand items at a time."""
    from charnn.serve.app import PIECE, dumps_in_pieces
    n = 3 * PIECE + 7
    answer = {"id": "cmpl-1", "choices": [{"text": "é\"\n" * 10, "index": 0, "logprobs": {
        "tokens": ["a", "\u00e9", "\""] * (n // 3), "token_logprobs": [None] + [-0.5] * (n - 1),
        "top_logprobs": [{"a": -0.1, "b": -2.5}] * n, "text_offset": list(range(n))}}, {"x": [[1, {"y": []}], {}]}],
        "usage": {"prompt_tokens": n}, "empty": {}, "none": []}
    pieces = list(dumps_in_pieces(answer))
    assert "".join(pieces) == json.dumps(answer, ensure_ascii=False)
    assert max(map(len, pieces)) < len("".join(pieces)) / 4  # (no piece is most of it: the choices were one)
    for other in ([], {}, [[]], [{}], "s", None, {1: "an int key"}, [{"a": [1, 2]}, 3]):
        assert "".join(dumps_in_pieces(other)) == json.dumps(other, ensure_ascii=False)


def test_sigterm_ends_the_requests_in_flight_at_once(trained_run):
    """Was: the open streams never ended by themselves, so every stop waited out uvicorn's 3 s grace, then cut them
    mid-body (no error event, no [DONE]); a queued request got a plain-text 500 (SIGINT) or a dropped connection
    (SIGTERM), and the log a CancelledError traceback per request."""
    s = Served(trained_run.run_dir, "--max-batch", "1", "--max-tokens-limit", "1000000")
    try:
        conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=60)
        conn.request("POST", "/v1/completions", json.dumps({"prompt": "the", "max_tokens": 1000000, "stream": True}),
                     {"Content-Type": "application/json"})
        stream = conn.getresponse()
        assert stream.status == 200 and stream.read1(1000).startswith(b"data: ")  # generating
        queued = {}

        def wait_in_queue():  # the one row is taken: this request waits for it
            queued["reply"] = s.request("POST", "/v1/completions", {"prompt": "the", "max_tokens": 5})
        waiter = threading.Thread(target=wait_in_queue)
        waiter.start()
        deadline = time.time() + 30
        while s.health().get("queued", 0) < 1 and time.time() < deadline:
            time.sleep(0.05)
        s.proc.send_signal(signal.SIGTERM)
        tail = b""
        while True:
            chunk = stream.read1(65536)
            if not chunk:
                break
            tail = (tail + chunk)[-1000:]
        waiter.join(30)
        _, stderr = s.proc.communicate(timeout=30)
        assert b'"message":"the server is shutting down; retry shortly"' in tail and tail.endswith(b"data: [DONE]\n\n")
        status, headers, body = queued["reply"]
        assert status == 503 and json.loads(body)["error"]["code"] == "shutting_down"
        assert "Traceback" not in stderr and "CancelledError" not in stderr, stderr
    finally:
        s.close()
