import pytest
import torch
from conftest import TINY_MODEL, TINY_TRAIN, make_text

from charnn.checkpoint import build_from_checkpoint, load_checkpoint
from charnn.config import ModelConfig, TrainConfig
from charnn.data.batches import split_text
from charnn.data.corpus import Corpus
from charnn.scoring.evaluate import evaluate_text
from charnn.training.trainer import lr_at, train


def test_learning_really_happens(trained_run):
    # uniform guessing over ~20 characters is ~3 nats/char; a model that learned the words is far below
    assert trained_run.steps == 150
    assert trained_run.best_val_loss < 1.3
    assert (trained_run.run_dir / "best.pt").is_file() and (trained_run.run_dir / "last.pt").is_file()


def test_save_load_gives_the_same_logits(trained_run, corpus_file):
    data = load_checkpoint(trained_run.run_dir / "last.pt")
    model, tok = build_from_checkpoint(data)
    again, _ = build_from_checkpoint(load_checkpoint(trained_run.run_dir / "last.pt"))
    x = torch.from_numpy(tok.encode(corpus_file.read_text()[:200])).view(1, -1)
    with torch.no_grad():
        assert torch.equal(model(x)[0], again(x)[0])
    # the checkpoint is plain data: it loads with weights_only=True and carries its format version
    raw = torch.load(trained_run.run_dir / "best.pt", weights_only=True)
    assert raw["format"] == "charnn" and raw["version"] == 1
    assert raw["model_config"]["hidden"] == TINY_MODEL["hidden"]


def test_training_val_loss_equals_eval_on_the_same_text(trained_run, corpus_file):
    data = load_checkpoint(trained_run.run_dir / "best.pt")
    model, tok = build_from_checkpoint(data)
    _, val_text = split_text(corpus_file.read_text(encoding="utf-8"), 0.1)
    result = evaluate_text(model, tok, val_text, torch.device("cpu"))
    assert abs(result.nats_per_char - data["val_loss"]) < 0.01
    assert result.chars == len(val_text) and result.unknown == 0


def test_eval_scores_every_character_from_the_samplers_start(trained_run):
    """The first character is scored too, conditioned on the id that sampling without a prime starts from;
    the total matches a token-by-token loop over [start] + text (7 characters -> 7 predictions)."""
    import torch.nn.functional as F

    from charnn.generation.prompt import start_ids
    from charnn.text.tokenizer import start_id

    model, tok = build_from_checkpoint(load_checkpoint(trained_run.run_dir / "best.pt"))
    text = "the cat"
    result = evaluate_text(model, tok, text, torch.device("cpu"))
    assert (result.chars, result.tokens) == (len(text), len(text))
    assert start_ids(tok, "") == [start_id(tok)] == [int(tok.encode("\n")[0])]
    ids = [start_id(tok)] + [int(i) for i in tok.encode(text)]
    model.eval()
    state, nats = None, 0.0
    with torch.no_grad():
        for prev, nxt in zip(ids[:-1], ids[1:]):
            logits, state = model(torch.tensor([[prev]]), state)
            nats += F.cross_entropy(logits[0, -1:].double(), torch.tensor([nxt])).item()
    assert result.nats == pytest.approx(nats, rel=1e-5)


def test_seeded_training_is_reproducible(tmp_path):
    text = make_text(200, seed=5)
    runs = []
    for name in ("a", "b"):
        cfg = TrainConfig(out=str(tmp_path), name=name, **{**TINY_TRAIN, "max_steps": 12, "eval_every": 6})
        runs.append(train(Corpus(text, "t", "t"), ModelConfig(vocab_size=1, **TINY_MODEL), cfg))
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_schedule_warms_up_then_decays():
    cfg = TrainConfig(lr=1.0, warmup=10, min_lr_frac=0.1, max_steps=100)
    assert lr_at(0, 0.0, cfg) == pytest.approx(0.1)
    assert lr_at(9, 0.0, cfg) == pytest.approx(1.0)  # warm-up done, decay not begun
    assert lr_at(50, 0.5, cfg) == pytest.approx(0.55)
    assert lr_at(100, 1.0, cfg) == pytest.approx(0.1)
    open_ended = TrainConfig(lr=1.0, warmup=10)
    assert lr_at(500, 0.0, open_ended) == 1.0


def test_max_time_budget_counts_everything(tmp_path):
    import time
    text = make_text(3000, seed=1)
    cfg = TrainConfig(out=str(tmp_path), name="timed", **{**TINY_TRAIN, "max_steps": None, "max_time": 4.0,
                                                           "eval_every": 50})
    t0 = time.perf_counter()
    result = train(Corpus(text, "t", "t"), ModelConfig(vocab_size=1, **TINY_MODEL), cfg)
    wall = time.perf_counter() - t0
    assert result.stopped == "max_time"
    assert result.steps > 10
    assert wall < 4.0 + 2.0  # a loose bound: the budget includes the final evaluation and save


def test_patience_stops_an_open_ended_run(tmp_path):
    text = make_text(300, seed=2)
    cfg = TrainConfig(out=str(tmp_path), name="p", **{**TINY_TRAIN, "max_steps": None, "lr": 1e-6, "warmup": 0,
                                                       "eval_every": 2, "patience": 2})
    result = train(Corpus(text, "t", "t"), ModelConfig(vocab_size=1, **TINY_MODEL), cfg)
    assert result.stopped == "patience"


def test_patience_given_beside_a_limit_stops_early_and_not_given_does_not(tmp_path):
    """--patience beside --max-steps was ignored without a word; early stopping within a limit is what Keras'
    and most trainers' users expect of it. Not given, a limited run trains to its limit, as before."""
    text = make_text(300, seed=2)
    flat = {**TINY_TRAIN, "max_steps": 40, "lr": 1e-6, "warmup": 0, "eval_every": 2}
    cfg = TrainConfig(out=str(tmp_path), name="p", **{**flat, "patience": 2})
    assert cfg.stop_patience == 2 and TrainConfig(**{**flat, "patience": None}).stop_patience is None
    assert TrainConfig(max_steps=None).stop_patience == 5
    result = train(Corpus(text, "t", "t"), ModelConfig(vocab_size=1, **TINY_MODEL), cfg)
    assert result.stopped == "patience" and result.steps < 40
    cfg = TrainConfig(out=str(tmp_path), name="q", **flat)
    result = train(Corpus(text, "t", "t"), ModelConfig(vocab_size=1, **TINY_MODEL), cfg)
    assert result.stopped == "max_steps" and result.steps == 40


def test_batch_size_defaults_by_device(tmp_path):
    from charnn.training.trainer import Trainer
    text = make_text(3000, seed=4)
    cfg = TrainConfig(out=str(tmp_path), name="auto", device="cpu", max_steps=1)
    assert cfg.batch_size is None
    trainer = Trainer(Corpus(text, "t", "t"), ModelConfig(vocab_size=1, **TINY_MODEL), cfg)
    assert trainer.cfg.batch_size == 8 and trainer.batches.batch_size == 8
    from charnn.device import default_batch_size
    assert default_batch_size(torch.device("cuda")) == 256


def bf16_trains_here() -> bool:
    """Whether one bf16 training step of a tiny charnn model runs on this CPU (oneDNN needs AVX-512 for it)."""
    from charnn.models.lm import CharRNN
    from charnn.training.precision import _runs
    x = torch.zeros(1, 4, dtype=torch.long)
    return _runs(CharRNN(ModelConfig(vocab_size=5, hidden=8, embed=4, layers=1)), x, x, torch.device("cpu"),
                 "bf16") is None


@pytest.mark.skipif(not bf16_trains_here(), reason="this CPU's oneDNN cannot run a bf16 LSTM (e.g. AVX2 only); "
                                                   "tests/test_precision.py checks the one-line error instead")
def test_bf16_training_learns_and_keeps_weights_optimiser_and_checkpoint_fp32(tmp_path):
    text = make_text(300, seed=4)
    cfg = TrainConfig(out=str(tmp_path), name="bf", **{**TINY_TRAIN, "max_steps": 60, "precision": "bf16"})
    result = train(Corpus(text, "t", "t"), ModelConfig(vocab_size=1, **TINY_MODEL), cfg)
    raw = torch.load(result.run_dir / "last.pt", weights_only=True)
    assert raw["precision"] == "bf16"
    assert all(v.dtype == torch.float32 for k, v in raw["model"].items())
    moments = [t for s in raw["optimizer"]["state"].values() for t in s.values() if t.dim() > 0]
    assert moments and all(t.dtype == torch.float32 for t in moments)
    assert result.best_val_loss < 2.2  # it learned (uniform over ~20 characters is ~3 nats)
    fp32 = train(Corpus(text, "t", "t"), ModelConfig(vocab_size=1, **TINY_MODEL),
                 TrainConfig(out=str(tmp_path), name="fp", **{**TINY_TRAIN, "max_steps": 60, "precision": "fp32"}))
    same_seed = torch.load(fp32.run_dir / "last.pt", weights_only=True)["model"]
    assert any(not torch.equal(raw["model"][k], same_seed[k]) for k in same_seed)  # bf16 autocast really ran


def test_compile_trains_the_same_weights_it_saves(tmp_path, monkeypatch):
    pytest.importorskip("torch._inductor")
    compiled, real = [], torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: compiled.append(model) or real(model, **kw))
    text = make_text(300, seed=5)
    cfg = TrainConfig(out=str(tmp_path), name="c", compile=True, **{**TINY_TRAIN, "max_steps": 20, "eval_every": 20})
    try:
        result = train(Corpus(text, "t", "t"), ModelConfig(vocab_size=1, **TINY_MODEL), cfg)
    except Exception as e:  # no C++ toolchain for inductor here: charnn says so in one line
        assert "--compile failed" in str(e)
        pytest.skip("torch.compile has no working toolchain on this machine")
    assert len(compiled) == 1  # the training forward really went through torch.compile
    model, tok = build_from_checkpoint(load_checkpoint(result.run_dir / "last.pt"))
    assert not any(k.startswith("_orig_mod") for k in torch.load(result.run_dir / "last.pt", weights_only=True)["model"])
    ev = evaluate_text(model, tok, split_text(text, 0.1)[1], torch.device("cpu"))
    assert abs(ev.nats_per_char - result.last_val_loss) < 1e-6


def test_a_time_limited_schedule_starts_its_decay_at_the_first_step(tmp_path):
    """--max-time counts the setup (imports, reading, measuring) against the run, but the learning rate's decay
    counted it too: a run whose setup took half its time began training at half its --lr."""
    import time
    import charnn
    from charnn.training.run import start_run
    text = tmp_path / "t.txt"
    text.write_text(make_text(400, seed=5), encoding="utf-8")
    rates = []

    def on_event(kind, info):
        if kind == "step":
            rates.append(info["lr"])
            if len(rates) == 3:
                raise charnn.StopTraining

    model_cfg = ModelConfig(vocab_size=1, hidden=16, layers=1, embed=8)
    cfg = TrainConfig(out=str(tmp_path), max_time=120, warmup=1, lr=1e-2, min_lr_frac=0.1, batch_size=4,
                      seq_len=16, device="cpu", threads=1, eval_every=100)
    start_run(str(text), model_cfg, cfg, on_event, started=time.perf_counter() - 60).fit()  # 60 s spent before
    assert rates[0] > 0.99e-2 and rates[-1] > 0.99e-2, rates  # (the old schedule: below 0.55e-2)
