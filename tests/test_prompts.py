"""Prompts (primes): conditioned as training and scoring condition text, and long ones loaded in chunks that keep
only the state, between the other rows' steps."""

import subprocess
import sys

import numpy as np
import pytest
import torch

import charnn
from charnn.api.model import Model
from charnn.checkpoint import build_from_checkpoint, load_checkpoint
from charnn.config import ModelConfig
from charnn.generation import batcher as batcher_mod
from charnn.generation import prefill as prefill_mod
from charnn.sampling import SamplingParams
from charnn.generation.batcher import Batcher, RowSpec
from charnn.generation.prefill import forward_chunks, prefill, run, same_state
from charnn.generation.prompt import start_ids
from charnn.models.lm import CharRNN
from charnn.text.tokenizer import CharTokenizer, start_id
from conftest import subprocess_env

CPU = torch.device("cpu")


@pytest.fixture
def loaded(trained_run):
    return build_from_checkpoint(load_checkpoint(trained_run.run_dir / "best.pt"), CPU)


def full_state(model, ids):
    """The model's state after `ids`, in one forward from a zero state (the reference)."""
    with torch.inference_mode():
        return model(torch.as_tensor(np.asarray(ids, dtype=np.int64))[None], None)[1]


# ---- a prime is read as training and scoring read text -----------------------------------------------


def test_a_prime_starts_from_the_start_id():
    tok = CharTokenizer(list("abc\n"))
    assert start_ids(tok, "").tolist() == [start_id(tok)]
    assert start_ids(tok, "ab").tolist() == [start_id(tok), *tok.encode("ab").tolist()]


@pytest.mark.parametrize("prime", ["t", "the dog"])
def test_a_rows_state_after_its_prime_is_the_state_after_the_start_id_and_the_prime(loaded, prime):
    model, tok = loaded
    b = Batcher(model, tok, CPU, capacity=1)
    b.add(RowSpec(prompt=prime, length=5, heal=False))
    context = [start_id(tok), *tok.encode(prime[:-1]).tolist()]  # the prime's last character is the first input
    h, c = full_state(model, context)
    assert torch.allclose(b.stepper.hs[0], h[:, 0].reshape(-1), atol=1e-5)
    assert torch.allclose(b.stepper.c[0][0], c[0, 0], atol=1e-5)
    assert int(b.tokens[0]) == int(tok.encode(prime[-1])[0])


def random_lm(seed=0):
    """A Model over a random LSTM (weights larger than the init, so the start id's state matters) and 11 letters."""
    torch.manual_seed(seed)
    tok = CharTokenizer(list("abcdefghij\n"))
    net = CharRNN(ModelConfig(vocab_size=tok.vocab_size, cell="lstm", layers=2, hidden=24, embed=8)).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.6)
    return Model(net, tok, CPU, "random.pt")


@pytest.mark.parametrize("prime", ["a", "bad\ncafe"])
def test_greedy_generation_is_the_argmax_of_the_full_forward_over_start_and_prime(prime):
    """An independent reference: at every step the most likely next character under one forward of the start id,
    the prime and everything written so far."""
    m, text = random_lm(), ""
    for _ in range(12):
        ids = [start_id(m.tokenizer), *m.tokenizer.encode(prime + text).tolist()]
        with torch.inference_mode():
            logits = m.net(torch.tensor([ids]), None)[0][0, -1].clone()
            logits[m.tokenizer.unk_id] = float("-inf")
        text += m.tokenizer.decode([int(logits.argmax())])
    assert m.generate(prime, 12, temperature=0) == text


def test_token_logprobs_of_a_text_add_up_to_its_score(trained_run):
    m = charnn.load(str(trained_run.run_dir))
    text = "the dog ran to the red barn\nthe cat"
    lp = m.token_logprobs(text)
    assert len(lp["token_logprobs"]) == len(text) and all(isinstance(v, float) for v in lp["token_logprobs"])
    assert sum(lp["token_logprobs"]) == pytest.approx(-m.score(text).nats, rel=1e-5)
    assert lp["tokens"] == list(text) and lp["text_offset"] == list(range(len(text)))
    top = [next(iter(d)) for d in lp["top_logprobs"]]
    assert all(len(t) == 1 for t in top)
    assert m.token_logprobs("") == {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}


# ---- long prompts: chunks, the state only, a window the model has forgotten past ---------------------


def forgetful_model(seed=0, forget=-3.0):
    """A random LSTM whose forget gates are mostly shut: it keeps a few dozen characters in mind."""
    torch.manual_seed(seed)
    model = CharRNN(ModelConfig(vocab_size=12, cell="lstm", layers=2, hidden=16, embed=8)).eval()
    with torch.no_grad():
        for name, p in model.rnn.named_parameters():
            if name.startswith("bias_ih"):
                p[16:32] = forget
    return model


def integrating_model(seed=0):
    """An LSTM whose cell state adds up its input forever (forget gate open, input gate open): it never forgets,
    so no window of a long prompt gives its state."""
    torch.manual_seed(seed)
    model = CharRNN(ModelConfig(vocab_size=12, cell="lstm", layers=1, hidden=4, embed=4)).eval()
    with torch.no_grad():
        model.rnn.weight_hh_l0.zero_()
        model.rnn.bias_ih_l0[:] = 0
        model.rnn.bias_ih_l0[0:4] = 30.0  # input gate open
        model.rnn.bias_ih_l0[4:8] = 30.0  # forget gate open
        model.rnn.weight_ih_l0[4:8].zero_()
    return model


def random_ids(n, vocab=12, seed=0):
    return np.random.default_rng(seed).integers(1, vocab, n).astype(np.int64)


def counted(monkeypatch, model):
    """Record every forward's length."""
    lengths, real = [], model.forward
    monkeypatch.setattr(model, "forward", lambda x, s=None: lengths.append(x.shape[1]) or real(x, s))
    return lengths


def test_a_long_prompt_runs_in_chunks_and_stops_at_the_window_it_needs(monkeypatch):
    model, ids = forgetful_model(), random_ids(50_000)
    lengths = counted(monkeypatch, model)
    with torch.inference_mode():
        state = run(prefill(model, ids, CPU, chunk=256, window=512))
    assert max(lengths) <= 256
    assert sum(lengths) <= 4096, sum(lengths)  # a few windows, not 50,000 tokens
    monkeypatch.undo()
    exact = full_state(model, ids)
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(state, exact))


def test_a_model_that_never_forgets_gets_the_whole_prompt_exactly(monkeypatch):
    model, ids = integrating_model(), random_ids(6_000)
    lengths = counted(monkeypatch, model)
    with torch.inference_mode():
        state = run(prefill(model, ids, CPU, chunk=256, window=512))
    assert sum(lengths) >= len(ids)  # ends with the whole prompt
    monkeypatch.undo()
    exact = full_state(model, ids)
    assert all(torch.allclose(a, b, rtol=1e-6, atol=1e-4) for a, b in zip(state, exact))
    assert exact[1].abs().max() > 100  # it really did add up the whole prompt


def test_short_prompts_are_run_whole(monkeypatch):
    model, ids = integrating_model(), random_ids(900)
    lengths = counted(monkeypatch, model)
    with torch.inference_mode():
        run(prefill(model, ids, CPU, chunk=256, window=512))
    assert lengths == [256, 256, 256, 132]


def test_states_are_compared_to_rounding():
    a = (torch.zeros(2, 1, 3), torch.full((2, 1, 3), 300.0))
    assert same_state(a, (a[0] + 1e-6, a[1] * (1 + 1e-6)))
    assert not same_state(a, (a[0] + 1e-3, a[1]))
    assert not same_state(torch.zeros(3), torch.ones(3))


def test_forward_chunks_carry_the_state(loaded):
    model, tok = loaded
    ids = tok.encode("the cat sat on the mat " * 20)
    with torch.inference_mode():
        *_, (out, state) = forward_chunks(model, ids, None, CPU, chunk=64)
    h, c = full_state(model, ids)
    assert torch.allclose(state[0], h, atol=1e-5) and torch.allclose(state[1], c, atol=1e-5)


def test_a_long_prompt_loads_between_the_other_rows_steps(loaded, monkeypatch):
    """A row already generating gets text from every step while a long prompt loads (one chunk per step here),
    and writes what it writes alone; the long row joins when its prompt is in."""
    model, tok = loaded
    monkeypatch.setattr(batcher_mod, "PREFILL_SECONDS", 0.0)
    monkeypatch.setattr(batcher_mod, "CHUNK", 64)
    monkeypatch.setattr(prefill_mod, "CHUNK", 64)
    alone = Batcher(model, tok, CPU, capacity=4)
    alone.add(RowSpec(prompt="the", length=300, sampling=SamplingParams(seed=5)))
    solo = "".join(p for _ in range(300) for _, p in alone.step(1))

    b = Batcher(model, tok, CPU, capacity=4)
    first = b.add(RowSpec(prompt="the", length=300, sampling=SamplingParams(seed=5)))
    long_prompt = "the dog ran to the red barn while birds sang\n" * 40  # 1,800 characters: 29 chunks of 64
    lengths = counted(monkeypatch, model)
    second = b.add(RowSpec(prompt=long_prompt, length=20, sampling=SamplingParams(seed=1)))
    assert second.slot == -1 and b.active == 2 and len(b.rows) == 1 and lengths == []
    text, steps_while_loading = {id(first): "", id(second): ""}, 0
    for _ in range(300):
        out = b.step(1)
        if second.slot == -1 and second.finish_reason is None:
            steps_while_loading += 1
            assert [r for r, _ in out] == [first]  # the generating row is never held up
        for r, piece in out:
            text[id(r)] += piece
        if not b.active:
            break
    assert steps_while_loading >= 25 and max(lengths) <= 64
    assert text[id(first)] == solo
    assert len(text[id(second)]) == 20 and second.finish_reason == "length"
    monkeypatch.undo()
    ref = Batcher(model, tok, CPU, capacity=1)
    ref.add(RowSpec(prompt=long_prompt, length=20, sampling=SamplingParams(seed=1)))
    assert "".join(p for _ in range(20) for _, p in ref.step(1)) == text[id(second)]


def test_rows_of_one_long_prompt_share_its_prefill_and_a_cancelled_one_leaves(loaded, monkeypatch):
    model, tok = loaded
    long_prompt = "the cat sat on a mat\n" * 200
    b = Batcher(model, tok, CPU, capacity=4)
    lengths = counted(monkeypatch, model)
    rows = [b.add(RowSpec(prompt=long_prompt, length=10, sampling=SamplingParams(seed=i))) for i in range(3)]
    assert b.active == 3 and len(b.loading) == 1
    b.remove(rows[1])
    assert b.active == 2 and rows[1] not in b.all_rows
    while b.active:
        b.step(8)
    assert sum(lengths) == len(long_prompt)  # one prefill (start id + all but the last character) for both rows
    assert rows[0].finish_reason == rows[2].finish_reason == "length" and rows[1].finish_reason is None
    c = Batcher(model, tok, CPU, capacity=2)
    gone = c.add(RowSpec(prompt=long_prompt, length=10))
    c.remove(gone)
    assert c.active == 0 and c.loading == [] and c.step(8) == []


def test_the_api_cleans_up_a_stream_abandoned_while_its_prompt_loads(trained_run):
    m = charnn.load(str(trained_run.run_dir))
    stream = m.stream("the cat sat on a mat\n" * 300, 50, seed=1)
    next(stream)
    stream.close()
    idle = [b for bs in m._pool.idle.values() for b in bs]
    assert idle and all(b.active == 0 and not b.loading for b in idle)
    assert isinstance(m, Model) and len(m.generate("the", 5, seed=1)) == 5


def peak_rss_mb(args, tmp_path):
    """Peak resident memory (MB) of `python -m charnn ARGS` and its stdout, measured in a child of its own."""
    probe = ("import resource, runpy, sys; sys.argv = ['charnn', *sys.argv[1:]]\n"
             "try:\n    runpy.run_module('charnn', run_name='__main__')\n"
             "finally:\n    sys.stderr.write('RSS %d' % resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    r = subprocess.run([sys.executable, "-c", probe, *map(str, args)], capture_output=True, text=True,
                       env=subprocess_env(), timeout=300)
    assert r.returncode == 0, r.stderr
    return int(r.stderr.rsplit("RSS ", 1)[1]) / 1024, r.stdout


def test_a_megabyte_prime_file_costs_little_memory_through_the_cli(trained_run, tmp_path):
    """1 MB of prime: on the old code one forward of a million steps that kept every position's output (GBs; on
    the default model a crash in the LSTM kernel). The issue's bound: 200 MB above sampling without a prime."""
    line = "the dog ran to the red barn while birds sang\n"
    prime = line * (1_000_000 // len(line))
    (tmp_path / "prime.txt").write_text(prime, encoding="utf-8")
    common = ["sample", trained_run.run_dir, "--length", "40", "--seed", "2", "--quiet"]
    base, _ = peak_rss_mb(common, tmp_path)
    peak, out = peak_rss_mb([*common, "--prime-file", tmp_path / "prime.txt"], tmp_path)
    assert out.startswith(prime) and len(out) in (len(prime) + 40, len(prime) + 41)
    assert peak - base < 200, (base, peak)
