"""The parallel-scan cells (`--cell mingru`, `--cell minlstm`; kind "minrnn"): the scan against the step-by-step
recurrence, windows against one pass, bf16 on long sequences, and everything the LSTM does (CLI training,
sampling through the Batcher, eval and --dynamic, resume, --init-from, labels and classify, torchrun)."""

import math
import random
import subprocess
import sys

import pytest
import torch
from conftest import drain, free_port, make_text, subprocess_env
from typer.testing import CliRunner

import charnn
from charnn.checkpoint import load_checkpoint
from charnn.cli.app import app
from charnn.config import ModelConfig, TrainConfig
from charnn.models.configs import MinRNNConfig
from charnn.data.corpus import Corpus
from charnn.errors import ConfigError
from charnn.generation.batcher import Batcher, RowSpec
from charnn.models import registry
from charnn.models.minrnn import MinRNN
from charnn.models.minstep import MinStepper
from charnn.models.scan import linear_recurrence, mingru_scan, sequential_mingru
from charnn.sampling import SamplingParams
from charnn.training.metrics import read_metrics
from charnn.training.trainer import StopRequest, Trainer, TrainingInterrupted, train

runner = CliRunner()
CELLS = ("mingru", "minlstm")
TRAIN = dict(batch_size=4, seq_len=16, lr=2e-2, warmup=2, eval_every=10, device="cpu", precision="fp32", threads=1,
             seed=5, save_every_secs=0)
TEXT = make_text(60, seed=4)
CLI_FLAGS = ["--hidden", "24", "--embed", "12", "--layers", "2", "--expand", "2", "--dropout", "0", "--batch-size",
             "4", "--seq-len", "16", "--device", "cpu", "--threads", "1", "--precision", "fp32", "--seed", "3",
             "--save-every-secs", "0", "--lr", "2e-2", "--warmup", "2"]


def small(cell: str, **kw) -> MinRNN:
    torch.manual_seed(0)
    return MinRNN(MinRNNConfig(vocab_size=11, cell=cell, layers=2, hidden=12, embed=5, dropout=0.0, expand=2, **kw))


# -- the scan --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("B,T", [(1, 1), (64, 1), (1, 4096), (3, 7), (64, 33), (5, 128), (2, 1000), (17, 257)])
def test_the_parallel_scan_equals_the_step_by_step_recurrence(B, T):
    g = torch.Generator().manual_seed(B * 10_000 + T)
    u = torch.randn(B, T, 2 * 6, generator=g) * 3  # gates from near 0 to near 1
    h0 = torch.randn(B, 6, generator=g)
    for start in (None, h0):
        ref = sequential_mingru(u.double(), None if start is None else start.double())
        assert (mingru_scan(u, start).double() - ref).abs().max() < 1e-5


@pytest.mark.parametrize("B,T", [(1, 1), (3, 5), (4, 40), (2, 129)])
def test_the_scans_gradients_equal_autograd_through_the_loop(B, T):
    g = torch.Generator().manual_seed(T)
    u = (torch.randn(B, T, 8, generator=g, dtype=torch.float64) * 3).requires_grad_()
    h0 = torch.randn(B, 4, generator=g, dtype=torch.float64).requires_grad_()
    w = torch.randn(B, T, 4, generator=g, dtype=torch.float64)
    ours = torch.autograd.grad((mingru_scan(u, h0) * w).sum(), (u, h0))
    ref = torch.autograd.grad((sequential_mingru(u, h0) * w).sum(), (u, h0))
    for a, b in zip(ours, ref):
        assert (a - b).abs().max() < 1e-5


def test_the_reverse_recurrence_is_the_forward_one_backwards():
    a, b = torch.rand(3, 45, 5), torch.randn(3, 45, 5)
    ref = linear_recurrence(a.flip(1), b.flip(1)).flip(1)
    assert torch.allclose(linear_recurrence(a, b, reverse=True), ref, atol=1e-6)


@pytest.mark.parametrize("cell", CELLS)
def test_a_sequence_split_into_windows_gives_the_states_of_one_pass(cell):
    model = small(cell).eval()
    x = torch.randint(11, (3, 60))
    with torch.no_grad():
        whole, last = model(x)
        parts, state = [], None
        for lo, hi in ((0, 1), (1, 17), (17, 40), (40, 60)):
            logits, state = model(x[:, lo:hi], state)
            parts.append(logits)
    assert last.shape == (2, 3, 24) and last.dtype == torch.float32
    assert torch.allclose(torch.cat(parts, 1), whole, atol=1e-5) and torch.allclose(state, last, atol=1e-5)


@pytest.mark.parametrize("cell", CELLS)
def test_bf16_stays_finite_over_10000_steps(cell):
    model = small(cell)
    x = torch.randint(11, (2, 10_000))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, state = model(x)
    assert state.dtype == torch.float32  # the scan runs in fp32 under autocast
    assert torch.isfinite(logits).all() and torch.isfinite(state).all()
    logits.float().logsumexp(-1).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("cell", CELLS)
def test_the_stepper_follows_the_full_forward_row_by_row(cell):
    model = small(cell).eval()
    x = torch.randint(11, (3, 12))
    with torch.no_grad():
        want = model(x)[0]
    stepper = registry.stepper_factory(model)(3, ())
    assert isinstance(stepper, MinStepper)
    for t in range(12):
        assert torch.allclose(stepper.step(x[:, t]), want[:, t], atol=1e-5), t
    stepper.move(2, 0)  # rows as the Batcher moves them: row 0 now continues row 2
    with torch.no_grad():
        after = model(torch.cat([x[2:], torch.tensor([[4]])], 1))[0][0, -1]
    assert torch.allclose(stepper.step(torch.tensor([4, 1, 1]))[0], after, atol=1e-5)
    with pytest.raises(Exception, match="--int8"):
        registry.stepper_factory(model, int8=True)(1, ())


# -- the kind, through charnn --------------------------------------------------------------------------------
def test_cell_picks_the_minrnn_kind_and_its_flags_are_its_own():
    assert registry.choose("text", "mingru").name == registry.choose("text", "minlstm").name == "minrnn"
    cfg = registry.kind_config(ModelConfig(vocab_size=9, kind="minrnn", cell="minlstm", extra={"expand": 3}))
    assert cfg == MinRNNConfig(vocab_size=9, cell="minlstm", expand=3)
    for bad, message in (({"cell": "lstm"}, "`--cell` of a minrnn model must be one of mingru, minlstm"),
                         ({"cell": "mingru", "expand": 0}, "`--expand` must be between 1 and 16")):
        with pytest.raises(ConfigError, match=message):
            registry.kind_config(ModelConfig(vocab_size=9, kind="minrnn", **{k: v for k, v in bad.items()
                                                                             if k != "expand"},
                                             extra={k: v for k, v in bad.items() if k == "expand"}))
    r = runner.invoke(app, ["train", "x.txt", "--expand", "3"])
    assert r.exit_code != 0 and "`--expand` is a flag of minrnn models; this run trains a lm model" in r.stderr


@pytest.fixture(scope="module", params=CELLS)
def cli_run(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param)
    corpus = out / "c.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    r = runner.invoke(app, ["train", str(corpus), "--cell", request.param, "--out", str(out), "--name", "m",
                            "--max-steps", "40", "--eval-every", "20", *CLI_FLAGS, "-q"])
    assert r.exit_code == 0, r.stderr
    return request.param, out / "m", corpus


def test_it_trains_from_the_command_line_and_learns(cli_run):
    cell, run, _ = cli_run
    data = load_checkpoint(run / "last.pt")
    assert data["model_config"]["kind"] == "minrnn" and data["model_config"]["cell"] == cell
    assert data["model_config"]["expand"] == 2 and data["model_config"]["ffn"] == 2
    assert data["best_val_loss"] < 0.75 * math.log(data["model_config"]["vocab_size"])
    assert data["progress"]["hidden"][0].shape == (2, 4, 48)  # (layers, streams, expand * hidden)
    r = runner.invoke(app, ["info", str(run)])
    assert r.exit_code == 0 and f"{cell}, 2 layers x 24 wide (state x2, feed-forward x2)" in r.stdout


def greedy(model, prompt: str, n: int) -> str:
    """Naive greedy decoding through the full forward over the whole text each time: the reference."""
    from charnn.generation.prompt import start_ids
    ids = [int(i) for i in start_ids(model.tokenizer, prompt)]
    with torch.no_grad():
        for _ in range(n):
            logits = model.net(torch.tensor([ids]))[0][0, -1].clone()
            if model.tokenizer.unk_id is not None:
                logits[model.tokenizer.unk_id] = -math.inf
            ids.append(int(logits.argmax()))
    return model.tokenizer.decode(ids[-n:])


def test_it_samples_through_the_batcher(cli_run):
    _, run, _ = cli_run
    model = charnn.load(run, device="cpu")
    b = Batcher(model.net, model.tokenizer, torch.device("cpu"), capacity=4)
    assert isinstance(b.stepper, MinStepper)
    rows = [b.add(RowSpec(prompt=p, length=25, sampling=SamplingParams(temperature=t, seed=s)))
            for p, t, s in (("the ", 0.0, 0), ("", 1.0, 1), ("a dog", 0.8, 2))]
    texts = dict(zip(map(id, rows), drain(b, rows)))
    assert all(len(texts[id(r)]) == 25 for r in rows)
    assert texts[id(rows[0])] == greedy(model, "the ", 25)
    r = runner.invoke(app, ["sample", str(run), "--length", "30", "--seed", "1", "-n", "2"])
    assert r.exit_code == 0 and len(r.stdout) >= 60, r.stderr


def test_it_evaluates_statically_and_dynamically(cli_run):
    _, run, corpus = cli_run
    r = runner.invoke(app, ["eval", str(run), str(corpus), "--dynamic", "--json"])
    assert r.exit_code == 0, r.stderr
    assert "dynamic" in r.stdout and "nats_per_char" in r.stdout


def test_it_resumes_bit_identically(tmp_path):
    """Stopped at step 9 and resumed to 18 equals 18 straight: weights, optimiser and the carried state."""
    corpus = Corpus(TEXT, "t", "t")
    flags = ModelConfig(vocab_size=1, kind="minrnn", cell="minlstm", layers=2, hidden=16, embed=8, dropout=0.1,
                        extra={"expand": 2})
    train(corpus, flags, TrainConfig(out=str(tmp_path), name="straight", max_steps=18, **TRAIN))
    stop = StopRequest()

    def stop_at_9(kind, info):
        if kind == "step" and info["step"] == 9:
            stop.signum = 2
    cfg = TrainConfig(out=str(tmp_path), name="resumed", max_steps=18, **TRAIN)
    with pytest.raises(TrainingInterrupted):
        Trainer(corpus, flags, cfg, stop_at_9, stop=stop).fit()
    Trainer(corpus, flags, cfg, resume=True).fit()
    a, b = (torch.load(tmp_path / n / "last.pt", weights_only=True) for n in ("straight", "resumed"))
    assert a["step"] == b["step"] == 18
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert torch.equal(a["progress"]["hidden"][0], b["progress"]["hidden"][0])
    with pytest.raises(ConfigError, match="--expand"):  # --resume keeps the state width
        Trainer(corpus, ModelConfig(**{**flags.__dict__, "extra": {"expand": 3}}), cfg, resume=True,
                explicit={"expand"})


def test_init_from_fine_tunes_a_minrnn_base(cli_run, tmp_path):
    cell, run, corpus = cli_run
    new = tmp_path / "new.txt"
    new.write_text("\n".join(f"Q-{line}" for line in make_text(30, seed=9).splitlines()) + "\n", encoding="utf-8")
    r = runner.invoke(app, ["train", str(new), "--init-from", str(run), "--out", str(tmp_path), "--name", "ft",
                            "--max-steps", "5", "--batch-size", "4", "--seq-len", "16", "--device", "cpu",
                            "--threads", "1", "--precision", "fp32", "-q"])
    assert r.exit_code == 0, r.stderr
    base, ft = load_checkpoint(run / "last.pt"), load_checkpoint(tmp_path / "ft" / "last.pt")
    assert ft["model_config"]["cell"] == cell and ft["model_config"]["expand"] == 2
    assert ft["model_config"]["vocab_size"] > base["model_config"]["vocab_size"]  # Q and - appended


def test_labels_and_classify(tmp_path):
    rng = random.Random(0)
    words = {"en": "the cat sat on a mat and the dog ran".split(), "de": "ein hund lief zum roten haus und".split()}
    files = []
    for lang, n in (("en", 200), ("de", 120)):
        f = tmp_path / f"{lang}.txt"
        f.write_text("\n".join(" ".join(rng.choice(words[lang]) for _ in range(6)) for _ in range(n)) + "\n")
        files.append(str(f))
    r = runner.invoke(app, ["train", *files, "--label-by", "file", "--cell", "mingru", "--out", str(tmp_path),
                            "--name", "lab", "--max-steps", "60", "--eval-every", "60", *CLI_FLAGS, "-q"])
    assert r.exit_code == 0, r.stderr
    r = runner.invoke(app, ["classify", str(tmp_path / "lab")], input="the dog sat on the mat\nein roten hund haus\n")
    assert r.exit_code == 0, r.stderr
    assert [line.split("\t")[0] for line in r.stdout.splitlines()] == ["en", "de"], r.stdout
    model = charnn.load(tmp_path / "lab", device="cpu").net
    x = torch.randint(model.config.vocab_size, (2, 20))
    with torch.no_grad():
        for label in (0, 1, 2):
            want = model(x, labels=torch.full((2, 20), label))[0]
            assert torch.allclose(model.for_label(label)(x)[0], want, atol=1e-5)


def test_two_torchrun_processes_follow_one_process(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    flags = ["train", str(corpus), "--cell", "mingru", "--out", str(tmp_path), "--max-steps", "8",
             "--eval-every", "8", "--log-every", "1", *CLI_FLAGS]
    env = subprocess_env(CHARNN_DIST_TIMEOUT="60")
    one = subprocess.run([sys.executable, "-m", "charnn", *flags, "--name", "one"], capture_output=True, text=True,
                         env=env, timeout=300)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
                          "--master-addr", "127.0.0.1", "--master-port", str(free_port()), "-m", "charnn", *flags,
                          "--name", "two"], capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stderr
    a, b = read_metrics(tmp_path / "one" / "metrics.jsonl"), read_metrics(tmp_path / "two" / "metrics.jsonl")
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, 9))
    for ra, rb in zip(a, b):
        assert rb["train_loss"] == pytest.approx(ra["train_loss"], rel=1e-4), ra["step"]
    assert load_checkpoint(tmp_path / "two" / "last.pt")["progress"]["hidden"][0].shape == (2, 4, 48)


def test_its_units_are_the_scan_states_charnn_show_ranks():
    """unit_activations: each layer's state after every step; the last step's equals the state forward returns."""
    from charnn.models.configs import MinRNNConfig
    from charnn.models.minrnn import MinRNN
    torch.manual_seed(0)
    model = MinRNN(MinRNNConfig(vocab_size=9, layers=2, hidden=8, embed=4, expand=1, ffn=0)).eval()
    x = torch.randint(0, 9, (2, 11))
    with torch.no_grad():
        units, names = model.unit_activations(x)
        _, state = model(x)
    assert units.shape == (2, 11, 16) and len(names) == 16 and names[8] == "L2 h 0"
    assert torch.allclose(units[:, -1, :8], state[0], atol=1e-6) and torch.allclose(units[:, -1, 8:], state[1], atol=1e-6)


def test_charnn_show_reads_its_units_and_gradient_reach():
    """charnn show's --cells and --gradients go through the kind's unit_activations and its embed/forward."""
    from charnn.models.configs import MinRNNConfig
    from charnn.inspect.activations import activations
    from charnn.inspect.gradients import gradient_reach
    from charnn.models.minrnn import MinRNN
    from charnn.text.tokenizer import CharTokenizer
    tok = CharTokenizer(list('abc \n"()'))
    torch.manual_seed(0)
    model = MinRNN(MinRNNConfig(vocab_size=tok.vocab_size, layers=2, hidden=16, embed=8))
    text = 'abc "ab" (c)\n' * 20
    reach = gradient_reach(model, tok, text, torch.device("cpu"), 20, 8)
    assert reach.relative[0] == 1.0 and 0 < reach.relative[19] < reach.relative[1]
    acts = activations(model, tok, text, torch.device("cpu"))
    assert acts.values.shape == (len(text), 32) and acts.names[16] == "L2 h 0"
