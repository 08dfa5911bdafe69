"""A model kind added through the registry alone (tests/bag_kind.py: its config, model and registry entry) trains,
saves, resumes, samples through the Batcher, evaluates and serves, with no change to charnn; and the registry
answers for charnn's own kinds as the code before it did."""

import asyncio
import json
import math

import bag_kind
import pytest
import torch
from conftest import asgi_post, drain, make_text

import charnn
from charnn.checkpoint import build_from_checkpoint, load_checkpoint
from charnn.config import ModelConfig, TrainConfig
from charnn.models.configs import LMConfig, Seq2SeqConfig
from charnn.sampling import SamplingParams
from charnn.data.corpus import Corpus
from charnn.errors import CharnnError, ConfigError
from charnn.generation.batcher import Batcher, RowSpec
from charnn.models import registry
from charnn.models.lm import CharRNN
from charnn.models.stepper import FastStepper, ModuleStepper
from charnn.reports.info import describe, summary_lines
from charnn.serve.app import create_app
from charnn.serve.config import ServeConfig
from charnn.text.tokenizer import start_id
from charnn.training.trainer import StopRequest, Trainer, TrainingInterrupted, train

TRAIN = dict(batch_size=4, seq_len=16, lr=3e-2, warmup=2, eval_every=10, device="cpu", precision="fp32", threads=1,
             seed=5, save_every_secs=0)
TEXT = make_text(40, seed=2)


def bag_flags(**kw) -> ModelConfig:
    """The flag bag that selects the kind: ModelConfig.kind (the trainer builds whatever the registry says)."""
    return ModelConfig(vocab_size=1, kind="bag", embed=12, **kw)


@pytest.fixture(scope="module")
def bag_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bag")
    result = train(Corpus(TEXT, "t", "t"), bag_flags(), TrainConfig(out=str(out), name="bag", max_steps=30, **TRAIN))
    return out, result


def test_the_toy_kind_trains_and_saves(bag_run):
    out, result = bag_run
    data = load_checkpoint(out / "bag" / "last.pt")
    assert data["model_config"]["kind"] == "bag" and data["step"] == 30
    assert set(data["model"]) == {"embed.weight", "head.weight", "head.bias"}
    vocab = data["model_config"]["vocab_size"]
    assert data["best_val_loss"] < 0.8 * math.log(vocab)  # it learned the characters' frequencies at least
    model, _ = build_from_checkpoint(data)
    assert isinstance(model, bag_kind.BagModel) and model.config == bag_kind.BagConfig(vocab, 12, 0.8)


def test_the_toy_kind_resumes_bit_identically(tmp_path):
    """Stopped at step 12 and resumed to 24 equals 24 straight: weights, optimiser and the carried (B, E) bag."""
    corpus = Corpus(TEXT, "t", "t")
    train(corpus, bag_flags(), TrainConfig(out=str(tmp_path), name="straight", max_steps=24, **TRAIN))
    stop = StopRequest()

    def stop_at_12(kind, info):
        if kind == "step" and info["step"] == 12:
            stop.signum = 2
    cfg = TrainConfig(out=str(tmp_path), name="resumed", max_steps=24, **TRAIN)
    with pytest.raises(TrainingInterrupted):
        Trainer(corpus, bag_flags(), cfg, stop_at_12, stop=stop).fit()
    assert load_checkpoint(tmp_path / "resumed" / "last.pt")["step"] == 12
    Trainer(corpus, bag_flags(), cfg, resume=True).fit()
    a, b = (torch.load(tmp_path / n / "last.pt", weights_only=True) for n in ("straight", "resumed"))
    assert a["step"] == b["step"] == 24
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert torch.equal(a["progress"]["hidden"][0], b["progress"]["hidden"][0])
    assert a["progress"]["hidden"][0].shape == (4, 12)  # the bag's own layout, batch first
    with pytest.raises(ConfigError, match="--embed 20"):  # what the kind says --resume keeps
        Trainer(corpus, ModelConfig(vocab_size=1, kind="bag", embed=20), cfg, resume=True, explicit={"embed"})


def test_the_toy_kind_samples_through_the_batcher(bag_run):
    out, _ = bag_run
    model = charnn.load(out / "bag", device="cpu")
    b = Batcher(model.net, model.tokenizer, torch.device("cpu"), capacity=4)
    assert isinstance(b.stepper, ModuleStepper)
    rows = [b.add(RowSpec(prompt=p, length=30, sampling=SamplingParams(temperature=t, seed=s)))
            for p, t, s in (("the ", 0.0, 0), ("", 1.0, 1), ("a cat", 0.8, 2))]
    texts = dict(zip(map(id, rows), drain(b, rows)))
    assert all(len(texts[id(r)]) == 30 and r.finish_reason == "length" for r in rows)
    # the greedy row is the model's own greedy continuation, whatever else was in the batch
    assert texts[id(rows[0])] == greedy(model, "the ", 30)
    assert model.generate("the ", length=30, temperature=0.0) == texts[id(rows[0])]
    with pytest.raises(CharnnError, match="fast stepper"):
        Batcher(model.net, model.tokenizer, torch.device("cpu"), capacity=1, int8=True)


def greedy(model, prompt: str, n: int) -> str:
    """Naive greedy decoding with the model's forward over the whole text each time: the reference."""
    from charnn.generation.prompt import start_ids
    ids = [int(i) for i in start_ids(model.tokenizer, prompt)]
    out = []
    with torch.no_grad():
        while len(out) < n:
            logits, _ = model.net(torch.tensor([ids]))
            logits = logits[0, -1].clone()
            if model.tokenizer.unk_id is not None:
                logits[model.tokenizer.unk_id] = -math.inf
            ids.append(int(logits.argmax()))
            out.append(ids[-1])
    return model.tokenizer.decode(out)


def test_the_toy_kind_evaluates_and_describes_itself(bag_run):
    out, _ = bag_run
    model = charnn.load(out / "bag", device="cpu")
    text = "the cat sat on the mat\n"
    ids = torch.tensor([[int(i) for i in model.tokenizer.encode(text)]])
    x = torch.cat([torch.full((1, 1), start_id(model.tokenizer)), ids], 1)[:, :-1]  # conditioned on the start id
    result = model.score(text)
    assert result.tokens == ids.shape[1] and math.isfinite(result.nats) and result.nats > 0
    with torch.no_grad():
        naive = torch.nn.functional.cross_entropy(model.net(x)[0][0], ids[0], reduction="sum").item()
    assert result.nats == pytest.approx(naive, rel=1e-4)
    info = describe(str(out / "bag" / "last.pt"))
    assert info["model"] == {"embed": 12, "vocab_size": model.net.config.vocab_size, "kind": "bag",
                             "parameters": model.net.num_params()}
    assert any(line.startswith("model       bag: embed 12") for line in summary_lines(info))


def test_the_toy_kind_serves(bag_run):
    out, _ = bag_run
    model = charnn.load(out / "bag", device="cpu")
    app = create_app({"bag": model}, ServeConfig())
    status, body = asyncio.run(asgi_post(app, "/v1/completions", {"model": "bag", "prompt": "the ", "max_tokens": 20,
                                                             "temperature": 0}))
    assert status == 200, body
    answer = json.loads(body)
    assert answer["choices"][0]["text"] == greedy(model, "the ", 20)


# -- charnn's own kinds ---------------------------------------------------------------------------------------
def test_old_flat_model_configs_become_their_kinds_config():
    old = {"vocab_size": 9, "cell": "gru", "layers": 1, "hidden": 8, "embed": 4, "dropout": 0.0}  # no kind at all
    assert registry.kind_config(old) == LMConfig(vocab_size=9, cell="gru", layers=1, hidden=8, embed=4, dropout=0.0)
    s2s = {**old, "kind": "seq2seq", "source_vocab": 5, "labels": 0, "attention": False}
    assert registry.kind_config(s2s) == Seq2SeqConfig(vocab_size=9, source_vocab=5, cell="gru", layers=1, hidden=8,
                                                      embed=4, dropout=0.0, attention=False)
    with pytest.raises(ConfigError, match="model kind 'transformer' is not one this charnn knows"):
        registry.build_model({**old, "kind": "transformer"})


def test_charnns_kinds_step_fast_and_seq2seq_does_not_continue_text():
    lm = CharRNN(LMConfig(vocab_size=7, layers=1, hidden=8, embed=4)).eval()
    assert isinstance(registry.stepper_factory(lm)(2, ()), FastStepper)
    s2s = registry.build_model({"vocab_size": 7, "source_vocab": 5, "kind": "seq2seq", "hidden": 8, "embed": 4})
    with pytest.raises(CharnnError, match="sequence-to-sequence model transduces"):
        registry.stepper_factory(s2s)
    assert registry.get("lm").architecture == ("cell", "layers", "hidden", "embed")
    assert registry.get("lm").fixed_on_resume[:5] == ("cell", "layers", "hidden", "embed", "dropout")
    assert [f.name for f in registry.get("seq2seq").flags][-3:] == ["attention", "bidirectional", "attention_score"]
