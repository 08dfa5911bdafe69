"""One set of sampling rules (charnn.sampling.SamplingParams) for `charnn sample`, `charnn transduce`, the Python
API and the server: the same settings give the same text, temperature 0 is greedy everywhere, an invalid value
is refused with the same sentence by every entry point, and logits are divided by the temperature in one place."""

import inspect
import json
import math
import re
from pathlib import Path

import pytest
from conftest import train_tiny_pairs
from typer.testing import CliRunner

import charnn
from charnn.cli import app
from charnn.sampling import SAMPLING_FLAGS, SampleConfig, SamplingParams, TransduceConfig, python_spelling
from charnn.errors import ConfigError, ParamError
from charnn.generation.sampler import Sampler
from charnn.models.stepper import FastStepper
from charnn.serve.protocol import parse_request

runner = CliRunner()
PACKAGE = Path(charnn.__file__).parent


def invoke(*args, input=None):
    return runner.invoke(app, [str(a) for a in args], input=input)


def flat(text: str) -> str:
    """Whitespace runs as one space: a terminal may wrap a long error line."""
    return " ".join(text.split())


@pytest.fixture(scope="module")
def model(trained_run):
    return charnn.load(trained_run.run_dir, device="cpu")


@pytest.fixture(scope="module")
def pairs_run(tmp_path_factory):
    """A tiny sequence-to-sequence run (it learns little; sampling from it still depends on every setting)."""
    root = tmp_path_factory.mktemp("rules-s2s")
    return train_tiny_pairs(root, root / "runs")


# -- the same settings give the same text ---------------------------------------------------------------------------
SETTINGS = [dict(temperature=1.0), dict(temperature=0.7, top_k=5), dict(temperature=1.3, top_p=0.8),
            dict(temperature=0.5, top_k=4, top_p=0.9), dict(temperature=0.0), dict(temperature=1e-31)]


def _cli_flags(s: dict) -> list:
    flags = ["--temp", repr(s["temperature"])]
    for key in ("top_k", "top_p"):
        if key in s:
            flags += [SAMPLING_FLAGS[key], str(s[key])]
    return flags


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_sample_the_api_and_the_server_draw_the_same_text(trained_run, model, settings):
    api = model.generate("the", length=90, seed=7, **settings)
    r = invoke("sample", trained_run.run_dir, "--prime", "the", "--length", "90", "--seed", "7", "-q",
               *_cli_flags(settings))
    assert r.exit_code == 0, r.stderr
    assert r.stdout == "the" + api + ("" if api.endswith("\n") else "\n")
    sampler = Sampler(model.net, model.tokenizer, SampleConfig(length=90, prime="the", **settings), model.device, 7)
    assert "".join(sampler) == "the" + api
    req = parse_request(json.dumps({"prompt": "the", "max_tokens": 90, "seed": 7, **settings}).encode(), 1000, 4)
    assert req.params.sampling == SamplingParams(float(settings["temperature"]), settings.get("top_k"),
                                                 settings.get("top_p"), 7)


def test_transduce_samples_the_same_through_the_cli_and_the_api(pairs_run):
    lines = ["abc", "de", "cab"]
    got = charnn.load(pairs_run, device="cpu").transduce(lines, temperature=1.5, top_k=4, seed=3, n_best=2)
    r = invoke("transduce", pairs_run, "--temp", "1.5", "--top-k", "4", "--seed", "3", "--n-best", "2", "-q",
               input="\n".join(lines) + "\n")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.splitlines() == ["\t".join(outs) for outs in got]


# -- temperature 0 is greedy everywhere -----------------------------------------------------------------------------
def test_temperature_zero_is_greedy_in_every_entry_point(trained_run, model):
    assert SamplingParams(0.0).greedy and SamplingParams(1e-31).greedy and not SamplingParams(1e-6).greedy
    greedy = model.generate("the", length=60, top_k=1, seed=1)  # top-1 draws the most likely token, noise or not
    for seed in (1, 2):
        assert model.generate("the", length=60, temperature=0, seed=seed) == greedy
    assert SampleConfig(greedy=True).sampling.greedy  # --greedy is an alias of --temp 0
    for flags in (["--temp", "0"], ["--greedy"], ["--greedy", "--temp", "0"], ["--greedy", "--top-k", "1"]):
        r = invoke("sample", trained_run.run_dir, "--prime", "the", "--length", "60", "--seed", "5", "-q", *flags)
        assert r.exit_code == 0 and r.stdout == "the" + greedy + ("" if greedy.endswith("\n") else "\n"), flags
    for flags in (["--temp", "0.5"], ["--top-k", "3"], ["--top-p", "0.9"]):  # (they were ignored, without a word)
        r = invoke("sample", trained_run.run_dir, "--greedy", "--length", "5", *flags)
        assert r.exit_code == 2 and "give one or the other" in r.stderr and r.stdout == "", flags
    assert TransduceConfig(temperature=0.0, top_k=3).validate().sampling is None  # a greedy search in transduce
    assert TransduceConfig(temperature=0.5).validate().sampling == SamplingParams(0.5, seed=0)


def test_transduce_temperature_zero_is_the_greedy_search(pairs_run):
    m = charnn.load(pairs_run, device="cpu")
    assert m.transduce(["abc", "cab"], temperature=0, seed=4) == m.transduce(["abc", "cab"])


# -- an invalid value is refused with the same sentence everywhere -------------------------------------------------
INVALID = [("temperature", -1.0), ("temperature", 101.0), ("temperature", math.inf), ("temperature", math.nan),
           ("top_k", 0), ("top_k", -3), ("top_p", 0.0), ("top_p", 1.5), ("seed", -1), ("seed", 2**63)]


def _sentence(field: str, value) -> str:
    """What every entry point says after the parameter's name."""
    (name, message), = SamplingParams(**{field: value}).problems()
    assert name == field and message.startswith(f"`{field}` ")
    return message[len(field) + 3:]


@pytest.mark.parametrize("field, value", INVALID, ids=lambda v: repr(v))
def test_invalid_values_are_refused_alike(trained_run, model, field, value):
    sentence = _sentence(field, value)
    with python_spelling():  # (the API shows values as Python writes them: inf, not JSON's Infinity)
        python_sentence = _sentence(field, value)
    with pytest.raises(ParamError) as e:  # the Python API
        model.generate("the", length=5, **{field: value})
    assert str(e.value) == f"`{field}` {python_sentence}" and e.value.param == field
    if math.isfinite(value):  # the server (JSON has no NaN or Infinity: the body is refused before)
        with pytest.raises(ParamError) as e:
            parse_request(json.dumps({"prompt": "the", field: value}).encode(), 1000, 4)
        assert str(e.value) == f"`{field}` {sentence}" and e.value.param == field
    flag = SAMPLING_FLAGS[field]
    for config in (SampleConfig, TransduceConfig):  # the command lines' configs, and Seq2SeqModel.transduce's
        with pytest.raises(ConfigError, match=re.escape(f"`{flag}` {sentence}")):
            config(**{field: value}).validate()
    for command in (["sample", trained_run.run_dir], ["transduce", trained_run.run_dir]):
        r = invoke(*command, flag, repr(value) if isinstance(value, float) else str(value), input="")
        assert r.exit_code == 2 and f"`{flag}` {sentence}" in flat(r.stderr), (command, r.stderr)


# -- one place divides logits; the stepper does not scale them ------------------------------------------------------
def test_logits_are_divided_by_the_temperature_in_one_place():
    assert "logit_scale" not in inspect.signature(FastStepper).parameters
    division = re.compile(r"(/\s*\(?\s*(self\.|sampling\.)?temp\w*)|(div_?\(\s*(self\.)?\w*(temp|scale))")
    dividing = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                      if any(division.search(line.split("#")[0]) for line in p.read_text(encoding="utf-8").splitlines()
                             if not line.strip().startswith(("#", '"""'))))
    assert dividing == ["generation/draw.py"], dividing


# -- `charnn sample` loads through the API's loader -----------------------------------------------------------------
def test_sample_loads_through_the_api_and_adapts_as_it_does(trained_run, monkeypatch, tmp_path):
    import charnn.api.model as api_model

    calls = []
    real, loader = api_model.load, api_model.load_model  # (sample loads as `load` does, in its own --int8 words)
    monkeypatch.setattr(api_model, "load_model", lambda *a, **k: calls.append(a) or loader(*a, **k))
    text = "the cat sat on the mat and the dog ran\n" * 4
    (tmp_path / "style.txt").write_text(text, encoding="utf-8")
    r = invoke("sample", trained_run.run_dir, "--adapt", tmp_path / "style.txt", "--prime", "the", "--length", "70",
               "--seed", "2", "-q")
    assert r.exit_code == 0, r.stderr
    assert len(calls) == 1
    want = real(trained_run.run_dir, device="cpu").adapt(text).generate("the", length=70, seed=2)
    assert r.stdout == "the" + want + ("" if want.endswith("\n") else "\n")


def test_transduce_checks_the_values_temperature_0_clears():
    """--temp 0 makes transduce a greedy search, but its --top-k/--top-p are still checked as given (they were
    cleared before the check, so bad values passed)."""
    with pytest.raises(ConfigError, match="--top-k"):
        TransduceConfig(temperature=0, top_k=-5).validate()
    assert TransduceConfig(temperature=0, top_k=3).validate().sampling is None
