"""Sampling: the fast stepper against the full forward, decoding filters, and the `sample` command end to end."""

import math
import os
import subprocess
import sys
from types import SimpleNamespace
from typing import List

import pytest
import torch
from typer.testing import CliRunner

from conftest import fake_cuda

from charnn.checkpoint import build_from_checkpoint, load_checkpoint
from charnn.cli import app
from charnn.config import ModelConfig
from charnn.sampling import SampleConfig
from charnn.errors import CharnnError
from charnn.sampling import SamplingParams
from charnn.generation.batcher import Batcher, RowSpec
from charnn.generation.draw import filter_logits, gumbel_noise
from charnn.generation.sampler import Sampler
from charnn.models.int8 import kernel, weight_levels
from charnn.models.lm import CharRNN
from charnn.models.stepper import FastStepper, ModuleStepper, full_forward_logits

runner = CliRunner()


def run(*args):
    return runner.invoke(app, ["sample", *[str(a) for a in args]])


def tiny_model(cell, layers=3, seed=0):
    """All dimensions different (V=11, E=5, H=7) so that a transposed axis cannot hide."""
    torch.manual_seed(seed)
    model = CharRNN(ModelConfig(vocab_size=11, cell=cell, layers=layers, hidden=7, embed=5)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.6)  # larger than the init, so every gate matters
    return model


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_stepper_matches_full_forward(cell):
    model = tiny_model(cell)
    ids = torch.randint(0, 11, (30,), generator=torch.Generator().manual_seed(1)).tolist()
    want = torch.softmax(full_forward_logits(model, ids).double(), -1)  # (T, V)
    stepper = FastStepper(model, batch=3)
    got = [torch.softmax(stepper.step(torch.full((3,), t)).double(), -1) for t in ids]  # T x (B, V)
    assert (torch.stack(got) - want[:, None]).abs().max().item() < 1e-5


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_stepper_continues_from_a_forward_state_with_a_ban(cell):
    model = tiny_model(cell, layers=2, seed=2)
    ids = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3]
    want = full_forward_logits(model, ids)[-1]
    with torch.inference_mode():
        _, state = model(torch.tensor([ids[:-1]]))
    stepper = FastStepper(model, batch=2, banned=[0])
    stepper.load_state(state)
    got = stepper.step(torch.tensor([ids[-1]] * 2))
    assert torch.isinf(got[:, 0]).all() and (got[:, 0] < 0).all()
    assert (got[:, 1:] - want[1:]).abs().max().item() < 1e-5


def test_models_the_fast_stepper_does_not_cover_step_through_their_module():
    """A variant FastStepper refuses (a ReLU RNN) generates through ModuleStepper, the model's own forward;
    only int8, which needs the fast stepper, is refused in one line."""
    model = tiny_model("rnn")
    model.rnn.nonlinearity = "relu"
    with pytest.raises(NotImplementedError):
        FastStepper(model, 1)
    tok = SimpleNamespace(unk_id=None)
    b = Batcher(model, tok, torch.device("cpu"), capacity=2)
    assert isinstance(b.stepper, ModuleStepper)
    b.stepper.load(0, None)
    ids = [1, 4, 2, 7]
    got = torch.stack([b.stepper.step(torch.tensor([i]))[0].clone() for i in ids])
    assert torch.allclose(got, full_forward_logits(model, ids), atol=1e-5)
    with pytest.raises(CharnnError, match="LSTM, GRU, RNN, minGRU and minLSTM"):
        Batcher(model, tok, torch.device("cpu"), capacity=1, int8=True)


PROBS = torch.tensor([0.4, 0.3, 0.15, 0.1, 0.05])


def draws(top_k=None, top_p=None, n=4000):
    logits = PROBS.log().expand(n, -1).clone()
    noise = gumbel_noise(torch.arange(n), torch.zeros(n, dtype=torch.long), 1, 5)[0]
    return (filter_logits(logits, top_k, top_p) + noise).argmax(-1)


def splitmix(x: int) -> int:
    """splitmix64's finalizer in plain Python integers: the reference for draw.mix64."""
    m = (1 << 64) - 1
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & m
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & m
    return x ^ (x >> 31)


def test_the_noise_is_the_documented_hash_row_by_row():
    """Each number is mix(mix(seed) + (draw * V + token) * golden) -> 23 bits -> Gumbel, for seeds and draw
    positions up to 2**63 (products wrap modulo 2**64), whatever the other rows; one row's block of k draws is
    the k rows of its longer stream that follow its position."""
    seeds, pos, V = [0, 7, 2**63 - 1, 123456789], [0, 5, 10**15, 3], 11
    got = gumbel_noise(torch.tensor(seeds), torch.tensor(pos), 3, V)
    m, golden = (1 << 64) - 1, 0x9E3779B97F4A7C15
    for i, (s, p) in enumerate(zip(seeds, pos)):
        for t in range(3):
            for v in range(V):
                x = splitmix((splitmix(s) + ((p + t) * V + v) * golden) & m)
                u = ((x >> 41) + 0.5) / (1 << 23)
                want = -math.log(-math.log(u))
                assert abs(got[t, i, v].item() - want) < 1e-4 * max(1.0, abs(want))
    longer = gumbel_noise(torch.tensor(seeds[1:2]), torch.tensor([0]), 8, V)
    assert torch.equal(gumbel_noise(torch.tensor(seeds[1:2]), torch.tensor([5]), 3, V), longer[5:8])
    assert torch.isfinite(gumbel_noise(torch.arange(64), torch.zeros(64, dtype=torch.long), 64, 128)).all()


@pytest.mark.parametrize("top_k, top_p, allowed", [
    (2, None, {0, 1}),
    (None, 0.8, {0, 1, 2}),  # 0.4 + 0.3 < 0.8, so the third token is needed to reach it
    (None, 0.4, {0}),
    (4, 0.75, {0, 1, 2}),
    (None, 1.0, {0, 1, 2, 3, 4}),
])
def test_top_k_and_top_p_never_draw_masked_tokens(top_k, top_p, allowed):
    assert set(draws(top_k, top_p).tolist()) == allowed


def test_gumbel_draws_follow_the_softmax():
    freq = torch.bincount(draws(n=20000), minlength=5).double() / 20000
    assert (freq - PROBS.double()).abs().max().item() < 0.02


@pytest.fixture(scope="module")
def ckpt(trained_run):
    return trained_run.run_dir / "best.pt"


def model_and_tokenizer(ckpt):
    return build_from_checkpoint(load_checkpoint(ckpt), "cpu")


@pytest.mark.parametrize("flags, k", [(["--top-k", "2"], 2), (["--top-p", "0.6"], None)])
def test_sampled_text_respects_the_filter_under_the_full_forward(ckpt, flags, k):
    r = run(ckpt, "--prime", "the ", "--length", "200", "--seed", "3", "-q", *flags)
    assert r.exit_code == 0, r.stderr
    text = r.stdout[:-1] if len(r.stdout) == 205 else r.stdout
    model, tok = model_and_tokenizer(ckpt)
    ids = tok.encode(text).tolist()
    probs = torch.softmax(full_forward_logits(model, ids), -1)[3:-1]  # predicts ids[4:]
    for p, nxt in zip(probs, ids[4:]):
        order = p.argsort(descending=True)
        if k is not None:
            assert nxt in order[:k].tolist()
        else:  # inside the nucleus: the mass of the tokens before it is below 0.6
            assert p[order][: order.tolist().index(nxt)].sum().item() < 0.6 + 1e-5


def test_greedy_is_deterministic_and_equals_top_k_1(ckpt):
    a = run(ckpt, "--greedy", "--length", "150", "--prime", "the ", "-q")
    b = run(ckpt, "--greedy", "--length", "150", "--prime", "the ", "-q", "--seed", "9")
    c = run(ckpt, "--top-k", "1", "--length", "150", "--prime", "the ", "-q", "--seed", "4")
    assert a.exit_code == 0 and a.stdout == b.stdout == c.stdout


def test_seeds_reproduce_batches(ckpt):
    args = (ckpt, "--length", "120", "--top-p", "0.9", "--temp", "0.7", "-n", "3", "-q")
    a, b, c = run(*args, "--seed", "11"), run(*args, "--seed", "11"), run(*args, "--seed", "12")
    assert a.exit_code == 0 and a.stdout == b.stdout != c.stdout


def test_num_samples_prints_each_after_a_separator(ckpt):
    r = run(ckpt, "--length", "40", "--prime", "a ", "-n", "4", "--seed", "1", "--separator", "\\n===\\n")
    assert r.exit_code == 0, r.stderr
    parts = r.stdout.rstrip("\n").split("\n===\n")
    assert len(parts) == 4 and len(set(parts)) == 4
    assert all(p.startswith("a ") and len(p) == 42 for p in parts[:3])
    assert "160 characters" in r.stderr  # 4 x 40 generated; primes and separators are not counted


def test_stop_ends_a_sample_right_after_the_string(ckpt):
    base = run(ckpt, "--length", "200", "--seed", "5", "--prime", "a", "-q").stdout
    gen = base[1:]
    assert "e" in gen
    r = run(ckpt, "--length", "200", "--seed", "5", "--prime", "a", "-q", "--stop", "e")
    assert r.stdout.rstrip("\n") == "a" + gen[:gen.index("e") + 1]


def test_prime_reads_the_escapes_stop_and_separator_read(ckpt, tmp_path):
    """--prime "a\\n" is a, newline (as --stop and --separator read it); \\\\ is one backslash; --prime-file is
    text as it is."""
    args = ("--length", "30", "--seed", "3", "-q", "--unknown", "skip")
    typed = run(ckpt, "--prime", "a\\n", *args)
    assert typed.exit_code == 0, typed.stderr
    (tmp_path / "p.txt").write_text("a\n", encoding="utf-8")
    assert typed.stdout.startswith("a\n")
    assert typed.stdout == run(ckpt, "--prime-file", tmp_path / "p.txt", *args).stdout
    literal = run(ckpt, "--prime", "a\\\\n", "--length", "0", "-q")  # a, backslash, n: the backslash is unknown
    assert literal.exit_code == 1 and "'\\\\'" in literal.stderr and literal.stdout == ""


def test_one_step_per_character_and_the_prime_in_one_forward(ckpt, monkeypatch):
    model, tok = model_and_tokenizer(ckpt)
    steps, forwards = [], []
    real_step, real_forward = FastStepper.step, model.forward
    monkeypatch.setattr(FastStepper, "step", lambda self, t: steps.append(1) or real_step(self, t))
    monkeypatch.setattr(model, "forward", lambda *a: forwards.append(a[0].shape) or real_forward(*a))
    sampler = Sampler(model, tok, SampleConfig(length=57, prime="the dog", num_samples=2), torch.device("cpu"), 0)
    out = "".join(sampler)
    assert len(steps) == 57 and forwards == [torch.Size([1, 7])]  # the start id, then "the do"
    assert sampler.chars == 114 and out.count("the dog") >= 2


def test_unknown_prime_characters(ckpt):
    r = run(ckpt, "--prime", "the Q\u00e9", "--length", "5")
    assert r.exit_code == 1 and "'Q'" in r.stderr and "'\u00e9'" in r.stderr and "--unknown skip" in r.stderr
    r = run(ckpt, "--prime", "the Q\u00e9", "--length", "5", "--unknown", "skip", "--seed", "1")
    assert r.exit_code == 0 and r.stdout.startswith("the ") and "dropped" in r.stderr and "'Q'" in r.stderr


@pytest.mark.parametrize("args, words", [
    (["--top-p", "0"], "--top-p"), (["--top-p", "1.5"], "--top-p"), (["--num-samples", "0"], "--num-samples"),
    (["--temp", "-1"], "--temp"), (["--unknown", "keep"], "--unknown"), (["--stop", ""], "--stop"),
    (["--prime", "a", "--prime-file", "-"], "Choose one"),
])
def test_bad_values_are_usage_errors(ckpt, args, words):
    r = run(ckpt, *args)
    assert r.exit_code == 2 and words in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_prime_from_stdin_and_from_a_file_through_real_processes(ckpt, tmp_path):
    cmd = f"printf 'the ca' | {sys.executable} -m charnn sample {ckpt} --prime-file - --length 30 --seed 2"
    p = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("the ca") and "seed 2" in p.stderr and "chars/s" in p.stderr
    (tmp_path / "prime.txt").write_text("the ca", encoding="utf-8")
    same = run(ckpt, "--prime-file", tmp_path / "prime.txt", "--length", "30", "--seed", "2", "-q")
    assert same.stdout == p.stdout


def test_closed_pipe_ends_quietly_with_a_batch(ckpt):
    cmd = (f"set -o pipefail; {sys.executable} -m charnn sample {ckpt} --length 1000000 -n 4 --seed 3 "
           f"| head -c 20")
    p = subprocess.run(["bash", "-c", cmd], capture_output=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert len(p.stdout) == 20 and b"Traceback" not in p.stderr and b"BrokenPipe" not in p.stderr


def test_sample_i_of_a_batch_is_what_its_seed_writes_alone(ckpt):
    """Sample i draws with seed + i: `-n 3 --seed 8`'s samples are `--seed 8`, `--seed 9` and `--seed 10`."""
    model, tok = model_and_tokenizer(ckpt)
    opts = dict(length=120, prime="the ", top_p=0.95, temperature=0.9)
    together = "".join(Sampler(model, tok, SampleConfig(num_samples=3, separator="|", **opts), torch.device("cpu"), 8))
    alone = ["".join(Sampler(model, tok, SampleConfig(**opts), torch.device("cpu"), s)) for s in (8, 9, 10)]
    assert together.split("|") == alone and len(set(alone)) == 3


def test_the_largest_seed_with_several_samples_wraps_as_the_api_does(ckpt):
    """--seed 2**63-1 -n 3: sample 2's seed overflowed a C long (a traceback); it wraps, as the API's."""
    model, tok = model_and_tokenizer(ckpt)
    top = 2**63 - 1
    together = "".join(Sampler(model, tok, SampleConfig(num_samples=2, separator="|", length=20), torch.device("cpu"),
                               top)).split("|")
    assert together[1] == "".join(Sampler(model, tok, SampleConfig(length=20), torch.device("cpu"), 0))


def test_many_samples_run_in_waves_that_write_what_one_batch_writes(ckpt, monkeypatch):
    """-n 100000000 held every row and every finished text at once (out of memory); waves of WAVE samples write
    the same samples in the same order."""
    import charnn.generation.sampler as sampler_module
    model, tok = model_and_tokenizer(ckpt)
    cfg = SampleConfig(num_samples=7, separator="|", length=30, prime="the ", stop="e ")
    whole = "".join(Sampler(model, tok, cfg, torch.device("cpu"), 4))
    monkeypatch.setattr(sampler_module, "WAVE", 3)
    assert "".join(Sampler(model, tok, cfg, torch.device("cpu"), 4)) == whole and whole.count("|") == 6


def one_token_at_a_time(model, tok, sampler: Sampler) -> List[str]:
    """The sampler's rows drawn through a Batcher one token per step: the reference a block must match."""
    batcher = Batcher(model, tok, torch.device("cpu"), capacity=len(sampler.rows()), int8=sampler.cfg.int8, block=1)
    for i, spec in enumerate(sampler.rows()):
        batcher.add(spec, tag=i)
    texts = [sampler.prime] * len(sampler.rows())
    while batcher.active:
        for row, piece in batcher.step(1):
            texts[row.tag] += piece + (sampler.cfg.stop if row.finish_reason == "stop" else "")
    return texts


@pytest.mark.parametrize("opts", [dict(length=300, num_samples=3, top_p=0.95, temperature=0.9),
                                  dict(length=77, prime="the ", top_k=5, stop="e t"),
                                  dict(length=45, num_samples=2, greedy=True),
                                  dict(length=70, prime="an", int8=True)])
def test_a_block_of_tokens_writes_what_one_token_at_a_time_writes(ckpt, opts):
    """The block body (what CUDA records as a graph) draws the same tokens as one-token steps: the same noise
    rows in the same order, state carried the same way."""
    model, tok = model_and_tokenizer(ckpt)
    sampler = Sampler(model, tok, SampleConfig(separator="|", **opts), torch.device("cpu"), 4, graphs=False)
    text = "".join(sampler)
    assert text.split("|") == one_token_at_a_time(model, tok, sampler) and sampler.chars > 0


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("opts", [dict(length=130, num_samples=2, prime="the "),
                                  dict(length=110, int8=True, prime="an", top_k=5),
                                  dict(length=100, greedy=True, prime="to")])
def test_a_captured_block_replays_the_same_text_its_warm_up_undone(ckpt, monkeypatch, cell, opts):
    """If state_tensors missed a buffer (c, the int8 codes, the logits) or the input tokens were not put back,
    the warm-up's steps would leak into the text. (Long enough for a block to be recorded and replayed: the
    first full block runs as is, the second is recorded.)"""
    _, tok = model_and_tokenizer(ckpt)
    torch.manual_seed(1)
    model = CharRNN(ModelConfig(vocab_size=tok.vocab_size, cell=cell, layers=2, hidden=24, embed=8)).eval()
    cfg = SampleConfig(**opts)
    plain = "".join(Sampler(model, tok, cfg, torch.device("cpu"), 3, graphs=False))
    captures = fake_cuda(monkeypatch)
    graphed = Sampler(model, tok, cfg, torch.device("cpu"), 3, graphs=True)
    assert "".join(graphed) == plain and graphed.notes == [] and captures == [(cfg.num_samples, 32)]


def test_rows_joining_or_leaving_drop_the_recorded_block(ckpt, monkeypatch):
    model, tok = model_and_tokenizer(ckpt)
    captures = fake_cuda(monkeypatch)
    batcher = Batcher(model, tok, torch.device("cpu"), capacity=4, block=4, graphs=True)
    first = batcher.add(RowSpec(prompt="the ", length=40, sampling=SamplingParams(seed=1)))
    for _ in range(3):
        batcher.step(4)  # the first full block runs as is, the second records, the third replays
    assert captures == [(1, 4)] and batcher.graph is not None
    batcher.add(RowSpec(prompt="an", length=40, sampling=SamplingParams(seed=2)))
    assert batcher.graph is None
    batcher.step(4)
    batcher.step(4)
    assert captures == [(1, 4), (2, 4)]
    batcher.remove(first)
    assert batcher.graph is None and batcher.active == 1


def test_a_capture_failing_after_its_warm_up_falls_back_from_the_same_state(ckpt, monkeypatch):
    model, tok = model_and_tokenizer(ckpt)
    cfg = SampleConfig(length=80, prime="the ", num_samples=2)
    plain = "".join(Sampler(model, tok, cfg, torch.device("cpu"), 5, graphs=False))
    fake_cuda(monkeypatch, fail_capture="CUDA error: operation not permitted when stream is capturing")
    refused = Sampler(model, tok, cfg, torch.device("cpu"), 5, graphs=True)
    assert "".join(refused) == plain
    assert refused.notes == ["sampling without CUDA graphs (CUDA error: operation not permitted when stream is capturing)"]


def test_a_refused_graph_capture_falls_back_to_the_plain_steps_with_a_note(ckpt, monkeypatch):
    def refuse(self, n, k):
        raise RuntimeError("operation not permitted when stream is capturing\nCUDA kernel errors might be...")
    monkeypatch.setattr(Batcher, "_capture", refuse)
    monkeypatch.setattr(Batcher, "_records", lambda self: self.graphs)
    model, tok = model_and_tokenizer(ckpt)
    cfg = SampleConfig(length=80, prime="the ")
    refused, plain = (Sampler(model, tok, cfg, torch.device("cpu"), 4, graphs=g) for g in (True, False))
    assert "".join(refused) == "".join(plain)
    assert refused.notes == ["sampling without CUDA graphs (operation not permitted when stream is capturing)"]


@pytest.fixture(params=["int_mm", "fbgemm"])
def int8_kernel(request, monkeypatch):
    """Both int8 kernels, whichever this machine would pick (int_mm is exact everywhere, only slow without VNNI)."""
    monkeypatch.setattr("charnn.models.stepper.int8_kernel", lambda: request.param)
    return request.param


def test_the_int8_kernel_is_int_mm_only_where_torch_runs_it_on_vnni(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_vnni_supported", lambda: True, raising=False)
    assert kernel() == ("int_mm" if torch.backends.mkldnn.is_available() else "fbgemm")
    with monkeypatch.context() as m:
        m.setattr(torch.backends.mkldnn, "enabled", False)  # torch._int_mm is then a plain loop
        assert kernel() == "fbgemm"
    assert torch.backends.mkldnn.enabled
    monkeypatch.setattr(torch.cpu, "_is_vnni_supported", lambda: False, raising=False)
    assert kernel() == "fbgemm"


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_int8_stepper_is_a_close_approximation(cell, int8_kernel):
    """int8 weights must really be used (the logits move) and stay close: the next-token distribution within
    a few parts in a thousand of the fp32 stepper's, along the same token path."""
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=11, cell=cell, layers=2, hidden=48, embed=5)).eval()
    ids = torch.randint(0, 11, (40,), generator=torch.Generator().manual_seed(1)).tolist()
    exact, approx = FastStepper(model, batch=2), FastStepper(model, batch=2, int8=True)
    diffs, moved = [], 0.0
    for t in ids:
        a, b = exact.step(torch.full((2,), t)).clone(), approx.step(torch.full((2,), t))
        moved = max(moved, (a - b).abs().max().item())
        diffs.append((torch.softmax(a.double(), -1) - torch.softmax(b.double(), -1)).abs().max().item())
    assert moved > 1e-6 and approx.kernel == int8_kernel  # not silently the fp32 path
    assert max(diffs) < 5e-3


def test_int8_codes_follow_a_loaded_state(monkeypatch):
    """After a prime's state is loaded, the int8 products must read the codes of that state, not stale zeros."""
    monkeypatch.setattr("charnn.models.stepper.int8_kernel", lambda: "int_mm")
    model = CharRNN(ModelConfig(vocab_size=11, layers=2, hidden=16, embed=5)).eval()
    _, state = model(torch.tensor([[1, 2, 3, 4]]))
    st = FastStepper(model, batch=3, int8=True)
    st.load_state(state)
    want = torch.round(torch.cat([state[0][0], state[0][1]], -1) * 127).expand(3, -1)
    assert st.codes.dtype == torch.int8 and torch.equal(st.codes.float(), want)


def test_int8_codes_follow_a_row_loaded_moved_or_copied(monkeypatch):
    """The Batcher's row methods keep each row's int8 codes with its state: a row joining a slot that another row
    left (or a new stepper) must not step on that row's stale codes."""
    monkeypatch.setattr("charnn.models.stepper.int8_kernel", lambda: "int_mm")
    model = CharRNN(ModelConfig(vocab_size=11, layers=2, hidden=16, embed=5)).eval()
    _, state = model(torch.tensor([[1, 2, 3, 4]]))
    codes = lambda st, r: torch.round(st.hs[r] * 127)  # noqa: E731
    st = FastStepper(model, batch=3, int8=True)
    st.step(torch.tensor([3, 5, 7]))  # every row's codes now those of a stepped state
    st.load(1, state)
    assert torch.equal(st.codes[1].float(), codes(st, 1))
    st.zero(2)
    assert not st.codes[2].any()
    st.move(1, 0)
    assert torch.equal(st.codes[0].float(), codes(st, 0))
    bigger = FastStepper(model, batch=4, int8=True)
    bigger.copy_rows(st, 3)
    assert torch.equal(bigger.codes[:3], st.codes[:3])


def saturating_int_mm(a, b, out=None):
    """What int8 products do on x86 without VNNI: a shifted to uint8, pairs of products summed in saturating
    int16, then the shift taken back out; right for 7-bit weights, wrong at the extremes of 8-bit ones."""
    u, w = a.long() + 128, b.long()
    pairs = (u[:, 0::2, None] * w[None, 0::2] + u[:, 1::2, None] * w[None, 1::2]).clamp(-32768, 32767)
    r = (pairs.sum(1) - 128 * w.sum(0)).int()
    return r if out is None else out.copy_(r)


@pytest.fixture
def fresh_levels():
    weight_levels.cache_clear()
    yield
    weight_levels.cache_clear()


def test_int8_weights_drop_to_7_bits_where_products_would_saturate(monkeypatch, fresh_levels):
    monkeypatch.setattr(torch, "_int_mm", saturating_int_mm)
    monkeypatch.setattr("charnn.models.stepper.int8_kernel", lambda: "int_mm")
    assert weight_levels(2) == 63
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=11, layers=2, hidden=16, embed=5)).eval()
    exact, approx = FastStepper(model, batch=2), FastStepper(model, batch=2, int8=True)
    for t in [1, 5, 2, 7, 3]:
        a, b = exact.step(torch.full((2,), t)).clone(), approx.step(torch.full((2,), t))
        assert (torch.softmax(a, -1) - torch.softmax(b, -1)).abs().max() < 5e-3


def test_int8_says_so_in_one_line_where_it_cannot_work(monkeypatch, fresh_levels):
    monkeypatch.setattr(torch, "_int_mm", lambda a, b, out=None: (a.long() @ b.long()).int() + 1)
    with pytest.raises(CharnnError, match="not exact; sample without --int8"):
        weight_levels(1)
    weight_levels.cache_clear()
    monkeypatch.delattr(torch, "_int_mm")
    with pytest.raises(CharnnError, match="needs torch._int_mm"):
        weight_levels(1)


def test_int8_levels_are_exact_on_an_older_instruction_set():
    """The real kernels with oneDNN held to AVX2 (no VNNI, as on many laptops): whatever the probe picks must
    give exact products on random codes at that range."""
    code = ("import torch; from charnn.models.int8 import weight_levels; L = weight_levels(4); "
            "a = torch.randint(-127, 128, (4, 512), dtype=torch.int8); "
            "w = torch.randint(-L, L + 1, (2048, 512), dtype=torch.int8); a[0] = 127; w[:5] = L; "
            "print(L, torch.equal(torch._int_mm(a, w.t()).long(), a.long() @ w.long().t()))")
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    levels, exact = p.stdout.split()
    assert exact == "True" and levels in ("63", "127")


def test_int8_sampling_from_the_cli_is_seeded_and_matches_fp32_closely(ckpt):
    args = (ckpt, "--length", "300", "--prime", "the ", "--seed", "5", "-q")
    a, b, exact = run(*args, "--int8"), run(*args, "--int8"), run(*args)
    assert a.exit_code == 0, a.stderr
    assert a.stdout == b.stdout and a.stdout.startswith("the ") and len(a.stdout) >= 304
    # the same noise (a hash of seed and position) through a near-identical distribution: where a near-tie
    # draws differently the texts part, and they meet again; most characters agree, not all
    same = sum(x == y for x, y in zip(a.stdout, exact.stdout)) / len(a.stdout)
    assert same >= 0.6, (same, a.stdout[:80], exact.stdout[:80])


def test_the_cli_shows_a_fallback_note_on_stderr_and_keeps_stdout_clean(ckpt, monkeypatch):
    original = Batcher._body

    def noting(self, n, k):
        if not self.notes:
            self.notes.append("sampling without CUDA graphs (refused)")
        return original(self, n, k)
    monkeypatch.setattr(Batcher, "_body", noting)
    r = run(ckpt, "--length", "30", "--seed", "1", "--prime", "the ")
    assert r.exit_code == 0 and "note: sampling without CUDA graphs (refused)" in r.stderr
    assert r.stdout.startswith("the ") and "note" not in r.stdout
    assert "note" not in run(ckpt, "--length", "30", "--seed", "1", "-q").stderr
