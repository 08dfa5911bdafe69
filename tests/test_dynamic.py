"""Dynamic evaluation (charnn/scoring/dynamic.py): it adapts, scores every token once before stepping on it, leaves
the checkpoint alone, is deterministic, and drives `charnn eval --dynamic` and `charnn sample --adapt`."""

import hashlib
import json

import pytest
import torch
from conftest import make_text, one_line_error
from typer.testing import CliRunner

import charnn
from charnn.checkpoint import build_from_checkpoint, load_checkpoint
from charnn.cli import app
from charnn.config import DynamicConfig, ModelConfig
from charnn.scoring.dynamic import adapt, evaluate_dynamic, score_static
from charnn.errors import ConfigError
from charnn.scoring.evaluate import evaluate_text
from charnn.models.lm import CharRNN
from charnn.text.tokenizer import CharTokenizer

CPU = torch.device("cpu")
# Words made of the tiny corpus's letters that it never contains, repeated: a pattern only adaptation can learn.
UNSEEN = "\n".join(["bird washing the old mat", "dim crows harm wild gods"] * 40) + "\n"


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def ckpt(trained_run):
    return trained_run.run_dir / "best.pt"


@pytest.fixture(scope="module")
def loaded(ckpt):
    return build_from_checkpoint(load_checkpoint(ckpt), CPU)


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_dynamic_evaluation_learns_a_pattern_unseen_in_training(loaded):
    model, tok = loaded
    assert not tok.unknown(UNSEEN)
    r = evaluate_dynamic(model, tok, UNSEEN, CPU)
    assert r.static.chars == r.dynamic.chars == len(UNSEEN) == r.dynamic.tokens
    assert r.dynamic.nats_per_char < r.static.nats_per_char - 0.3, (r.static.nats_per_char, r.dynamic.nats_per_char)
    # later repeats are predicted better than early ones: it is the steps, not the carried state, that learn
    early = adapt(model, tok, UNSEEN[:len(UNSEEN) // 4], CPU).result.nats_per_char
    assert r.dynamic.nats_per_char < early


def test_lr_zero_is_the_static_score_and_static_agrees_with_eval(loaded):
    model, tok = loaded
    for segment in (1, 7, 50):
        r = evaluate_dynamic(model, tok, UNSEEN, CPU, DynamicConfig(lr=0.0, segment=segment))
        assert r.dynamic.nats == pytest.approx(r.static.nats, rel=1e-9)
        assert r.gain == pytest.approx(0.0, abs=1e-9)
    # the static pass is the same model scoring the same tokens, in other chunks: `charnn eval`'s number
    assert score_static(model, tok, UNSEEN, CPU, 50).nats == pytest.approx(evaluate_text(model, tok, UNSEEN, CPU).nats,
                                                                           rel=1e-5)


def test_each_token_is_scored_before_the_step_on_it(loaded):
    """The first segment's score cannot depend on any step: a text's dynamic score over its first segment is
    the static one, however large the step."""
    model, tok = loaded
    head = UNSEEN[:30]
    r = evaluate_dynamic(model, tok, head, CPU, DynamicConfig(lr=1.0, segment=30))
    assert r.dynamic.nats == pytest.approx(r.static.nats, rel=1e-9)


def test_the_model_and_the_checkpoint_are_left_as_they_were(ckpt, loaded):
    model, tok = loaded
    before_file, before = sha(ckpt), {k: v.clone() for k, v in model.state_dict().items()}
    adapted = adapt(model, tok, UNSEEN, CPU)
    evaluate_dynamic(model, tok, UNSEEN, CPU)
    assert invoke("eval", ckpt, _write(ckpt.parent.parent / "unseen.txt", UNSEEN), "--dynamic").exit_code == 0
    assert sha(ckpt) == before_file
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert any(not torch.equal(v, before[k]) for k, v in adapted.model.state_dict().items())
    assert not any(p.requires_grad for p in adapted.model.parameters())


def test_deterministic_with_dropout_off_during_the_steps():
    torch.manual_seed(0)
    text = make_text(30, seed=5)
    tok = CharTokenizer.build(text)
    model = CharRNN(ModelConfig(vocab_size=tok.vocab_size, layers=2, hidden=24, embed=10, dropout=0.5)).train()
    scores = lambda r: (r.static, r.dynamic)  # noqa: E731
    a, b = evaluate_dynamic(model, tok, text, CPU), evaluate_dynamic(model, tok, text, CPU)
    assert scores(a) == scores(b) and a.gain > 0
    assert model.training  # the caller's mode is left alone
    assert scores(evaluate_dynamic(model.eval(), tok, text, CPU)) == scores(a)  # dropout played no part


def test_bad_settings_name_the_flag():
    for cfg, flag in ((DynamicConfig(lr=-1), "--dynamic-lr"), (DynamicConfig(decay=2), "--dynamic-decay"),
                      (DynamicConfig(segment=0), "--segment")):
        with pytest.raises(ConfigError, match=flag):
            cfg.validate()


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_eval_dynamic_json_and_table(ckpt, tmp_path, corpus_file):
    unseen = _write(tmp_path / "unseen.txt", UNSEEN)
    r = invoke("eval", ckpt, unseen, corpus_file, "--dynamic", "--segment", "40", "--json")
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert set(out) >= {"static", "dynamic", "gain_nats_per_char", "seconds", "checkpoint", "files", "dynamic_config"}
    assert out["dynamic_config"]["segment"] == 40 and out["dynamic_config"]["lr"] == DynamicConfig().lr
    assert out["static"]["chars"] == out["dynamic"]["chars"] == len(UNSEEN) + len(corpus_file.read_text())
    assert out["gain_nats_per_char"] == pytest.approx(out["static"]["nats_per_char"] - out["dynamic"]["nats_per_char"])
    assert [f["path"] for f in out["files"]] == [str(unseen), str(corpus_file)]
    first = out["files"][0]
    assert first["dynamic"]["nats_per_char"] < first["static"]["nats_per_char"] - 0.3
    assert set(first["seconds"]) == {"static", "dynamic"}
    table = invoke("eval", ckpt, unseen, "--dynamic", "--segment", "40")
    assert table.exit_code == 0 and "static" in table.stdout and "dynamic" in table.stdout
    assert f"{first['static']['nats_per_char']:.4f}" in table.stdout
    assert f"{first['dynamic']['nats_per_char']:.4f}" in table.stdout


@pytest.mark.parametrize("args, words", [
    (["--dynamic-lr", "0.1"], "--dynamic"),                   # a dynamic flag without --dynamic
    (["--dynamic", "--segment", "0"], "--segment"),
    (["--dynamic", "--dynamic-decay", "1.5"], "--dynamic-decay"),
    (["--dynamic", "--dynamic-lr", "nan"], "--dynamic-lr"),
    (["--dynamic", "--dynamic-lr", "1e300"], "--dynamic-lr"),   # would overflow the float32 weights
])
def test_eval_bad_dynamic_flags_are_usage_errors(ckpt, corpus_file, args, words):
    one_line_error(invoke("eval", ckpt, corpus_file, *args), 2, words)


def _count(ckpt, word, *extra):
    r = invoke("sample", ckpt, "--length", "3000", "--seed", "11", "--temp", "0.8", *extra)
    assert r.exit_code == 0, r.stderr
    return r, r.stdout.count(word)


def test_sample_adapt_takes_up_the_files_words(ckpt, tmp_path):
    """A model trained on text A, adapted on text B: with the same seed, B's words appear where they did not."""
    style = _write(tmp_path / "style.txt", UNSEEN)
    plain, before = _count(ckpt, "washing")
    adapted, after = _count(ckpt, "washing", "--adapt", style, "--dynamic-lr", "3e-3")  # a tiny model: a big step
    assert after >= 3 and after > 2 * before, (before, after)
    assert "adapted to" in adapted.stderr and f"{len(UNSEEN):,} characters" in adapted.stderr
    assert "adapted" not in plain.stderr
    quiet, _ = _count(ckpt, "washing", "--adapt", style, "--dynamic-lr", "3e-3", "-q")
    assert quiet.stderr == "" and quiet.stdout == adapted.stdout  # deterministic: the same seed, the same text


def test_sample_adapt_errors_are_one_line(ckpt, tmp_path):
    one_line_error(invoke("sample", ckpt, "--adapt", tmp_path / "missing.txt"), 1, "does not exist")
    one_line_error(invoke("sample", ckpt, "--adapt", _write(tmp_path / "empty.txt", "")), 1, "is empty")
    odd = _write(tmp_path / "odd.txt", "the cat Q\u00e9 sat\n" * 5)
    one_line_error(invoke("sample", ckpt, "--adapt", odd), 1, "'Q'", "'\u00e9'", "--unknown skip")
    one_line_error(invoke("sample", ckpt, "--segment", "5"), 2, "--adapt")
    r = invoke("sample", ckpt, "--adapt", odd, "--unknown", "skip", "--length", "20", "--seed", "1")
    assert r.exit_code == 0 and "dropped from --adapt" in r.stderr and "'Q'" in r.stderr


def test_python_api_adapts_a_copy(ckpt):
    model = charnn.load(str(ckpt), device="cpu")
    static = model.score(UNSEEN)
    dynamic = model.score(UNSEEN, dynamic=True)
    assert dynamic.nats_per_char < static.nats_per_char - 0.3
    adapted = model.adapt(UNSEEN, lr=3e-3)
    assert model.score(UNSEEN).nats == static.nats  # the loaded model is unchanged
    assert adapted.score(UNSEEN).nats_per_char < static.nats_per_char
    text = adapted.generate("", length=2000, temperature=0.8, seed=3)
    assert text.count("washing") > model.generate("", length=2000, temperature=0.8, seed=3).count("washing")
