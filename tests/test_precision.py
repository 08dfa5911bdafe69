"""--precision auto decides by measuring real training steps (issue 16), caches the decision, reports it,
leaves a seeded run's training unchanged; a forced bf16 this CPU cannot run is one line."""

import json
import platform
import time
import types
from dataclasses import replace

import pytest
import torch
from conftest import TINY_MODEL, TINY_TRAIN, make_text, one_line_error
from test_train import bf16_trains_here
from typer.testing import CliRunner

from charnn.cli import app
from charnn.config import ModelConfig, TrainConfig, cache_root
from charnn.data.cache import DECISIONS
from charnn.data.corpus import Corpus
from charnn.device import machine_name
from charnn.models.lm import CharRNN
from charnn.training import precision as P
from charnn.training.trainer import Trainer, train

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Each test starts with no remembered decisions."""
    monkeypatch.setenv("CHARNN_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def model_and_batch():
    model = CharRNN(ModelConfig(vocab_size=12, **TINY_MODEL))
    x = torch.randint(0, 12, (4, 16))
    return model, x, torch.roll(x, -1, 1)


@pytest.fixture
def fake_machine(monkeypatch):
    """A CPU with native bf16 where each candidate's step takes a set time (seconds per precision)."""
    speeds = {}
    monkeypatch.setattr(P, "native_bf16", lambda device: (True, ""))
    monkeypatch.setattr(P, "_runs", lambda *a: None)

    def step(self, x, y):
        time.sleep(speeds[self.precision])
        return speeds.get(self.precision + " loss", 1.0)

    monkeypatch.setattr(P._Probe, "step", step)
    return speeds


def test_auto_takes_the_faster_measured_precision_and_caches_it(model_and_batch, fake_machine):
    model, x, y = model_and_batch
    fake_machine.update(fp32=0.006, bf16=0.002)
    first = P.choose_precision("auto", model, x, y, CPU)
    assert (first.precision, first.how) == ("bf16", "measured") and 2.0 < first.speedup < 3.5
    assert "bf16 " in first.reason and "x fp32, measured" in first.reason
    fake_machine.update(fp32=0.001, bf16=0.009)  # the machine "changed": the cached decision still stands
    again = P.choose_precision("auto", model, x, y, CPU)
    assert (again.precision, again.how, again.speedup) == ("bf16", "cached", first.speedup)
    other_batch = P.choose_precision("auto", model, x[:2], y[:2], CPU)  # another shape: measured afresh
    assert (other_batch.precision, other_batch.how) == ("fp32", "measured") and other_batch.speedup < 1


def test_auto_keeps_fp32_within_noise_or_when_bf16_is_not_finite_or_does_not_run(model_and_batch, fake_machine,
                                                                                   monkeypatch):
    model, x, y = model_and_batch
    fake_machine.update(fp32=0.004, bf16=0.0039)  # 1.03x: noise, not a reason to change precision
    assert P.choose_precision("auto", model, x, y, CPU).precision == "fp32"
    fake_machine.update({"fp32": 0.006, "bf16": 0.001, "bf16 loss": float("nan")})
    bad = P.choose_precision("auto", model, x[:3], y[:3], CPU)
    assert bad.precision == "fp32" and "not finite" in bad.reason
    monkeypatch.setattr(P, "_runs", lambda m, x, y, d, p, extra=None: "no bf16 LSTM primitive" if p == "bf16" else None)
    broken = P.choose_precision("auto", model, x[:1], y[:1], CPU)
    assert broken.precision == "fp32" and "no bf16 LSTM primitive" in broken.reason


def test_no_native_bf16_means_fp32_without_a_probe(model_and_batch, monkeypatch):
    model, x, y = model_and_batch
    monkeypatch.setattr(P, "native_bf16", lambda device: (False, "this CPU has no native bf16"))
    monkeypatch.setattr(P, "_measure", lambda *a: pytest.fail("measured where nothing can win"))
    choice = P.choose_precision("auto", model, x, y, CPU)
    assert (choice.precision, choice.how, choice.reason) == ("fp32", "rule", "this CPU has no native bf16")
    assert P.choose_precision("fp32", model, x, y, CPU).how == "forced"


def test_a_torch_without_the_cpu_probes_reads_the_cpu_flags(monkeypatch, tmp_path):
    """torch before 2.5 has no torch.cpu._is_avx512_bf16_supported / _is_amx_tile_supported: Linux's CPU flags
    answer instead (an AMX Xeon was taken for a CPU without bf16), and where they cannot be read, the measurement
    decides."""
    import builtins

    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    real_open = builtins.open
    for flags, has in (("fpu avx2 avx512f avx512_bf16", True), ("fpu avx2 amx_tile amx_bf16", True),
                       ("fpu sse4_2 avx2 fma", False)):
        info = tmp_path / "cpuinfo"
        info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        monkeypatch.setattr(builtins, "open", lambda f, *a, **k: real_open(info if f == "/proc/cpuinfo" else f, *a, **k))
        assert P.native_bf16(torch.device("cpu"))[0] is has

    def no_file(f, *a, **k):
        raise OSError("no /proc here")

    monkeypatch.setattr(builtins, "open", no_file)
    assert P.native_bf16(torch.device("cpu"))[0] is True


def test_an_arm_cpus_bf16_is_read_from_its_features_not_from_x86_probes(monkeypatch, tmp_path):
    """torch's probes answer for x86 only: on an Arm CPU (Graviton 3, Apple M2) they said no bf16, and auto never
    measured it."""
    import builtins

    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    real_open = builtins.open
    for features, has in (("fp asimd sve bf16 i8mm", True), ("fp asimd evtstrm crc32", False)):
        info = tmp_path / "cpuinfo"
        info.write_text(f"processor\t: 0\nFeatures\t: {features}\nCPU part\t: 0xd40\n")
        monkeypatch.setattr(builtins, "open", lambda f, *a, **k: real_open(info if f == "/proc/cpuinfo" else f, *a, **k))
        has_it, reason = P.native_bf16(torch.device("cpu"))
        assert has_it is has and "AVX512" not in reason


def test_the_real_probe_leaves_model_and_rng_alone(model_and_batch, monkeypatch):
    model, x, y = model_and_batch
    monkeypatch.setattr(P, "native_bf16", lambda device: (True, ""))
    monkeypatch.setattr(P, "BUDGET", 0.2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    choice = P.choose_precision("auto", model, x, y, CPU)  # real steps; bf16 may or may not run on this CPU
    assert choice.how == "measured" and choice.precision in ("fp32", "bf16")
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    entry = json.loads((cache_root() / DECISIONS).read_text())
    assert any(e["precision"] == choice.precision and machine_name(CPU) in k for k, e in entry.items())


def test_auto_is_reported_and_a_seeded_run_trains_as_its_forced_choice(tmp_path):
    text = make_text(300, seed=6)
    events = []
    auto = Trainer(Corpus(text, "t", "t"), ModelConfig(vocab_size=1, **TINY_MODEL),
                   TrainConfig(out=str(tmp_path), name="auto", **{**TINY_TRAIN, "max_steps": 20, "precision": "auto"}),
                   lambda kind, info: events.append((kind, info)))
    auto.fit()
    start = next(info for kind, info in events if kind == "start")
    chosen = start["precision_choice"]
    assert chosen["precision"] == start["precision"] == auto.precision and chosen["how"] != "forced"
    forced = train(Corpus(text, "t", "t"), ModelConfig(vocab_size=1, **TINY_MODEL),
                   TrainConfig(out=str(tmp_path), name="forced",
                               **{**TINY_TRAIN, "max_steps": 20, "precision": chosen["precision"]}))
    a = torch.load(tmp_path / "auto" / "last.pt", weights_only=True)["model"]
    b = torch.load(forced.run_dir / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # the probe changed nothing but the precision


def test_a_resumed_auto_run_keeps_its_precision(tmp_path, monkeypatch):
    """Resuming must not measure again: a flipped choice (noise, or another torchrun rank's cache entry)
    would train the remaining steps in another precision than the run would have."""
    text = make_text(300, seed=6)
    cfg = TrainConfig(out=str(tmp_path), name="r", **{**TINY_TRAIN, "max_steps": 4, "precision": "auto"})
    first = Trainer(Corpus(text, "t", "t"), ModelConfig(vocab_size=1, **TINY_MODEL), cfg)
    first.fit()
    other = {"fp32": "bf16", "bf16": "fp32"}[first.precision]
    monkeypatch.setattr("charnn.training.trainer.choose_precision",
                        lambda *a, **k: P.PrecisionChoice(other, "measured", 2.0, "a flipped measurement"))
    again = Trainer(Corpus(text, "t", "t"), ModelConfig(vocab_size=1, **TINY_MODEL),
                    TrainConfig(out=str(tmp_path), name="r", **{**TINY_TRAIN, "max_steps": 8, "precision": "auto"}),
                    resume=True)
    assert again.precision == first.precision and again.precision_choice.how == "resumed"
    again.release()
    fresh = Trainer(Corpus(text, "t", "t"), ModelConfig(vocab_size=1, **TINY_MODEL),
                    TrainConfig(out=str(tmp_path), name="new", **{**TINY_TRAIN, "max_steps": 8, "precision": "auto"}))
    assert fresh.precision == other  # a new run does measure
    fresh.release()


@pytest.mark.skipif(bf16_trains_here(), reason="bf16 trains on this CPU, so there is no error to show")
def test_forced_bf16_where_it_cannot_run_is_one_line(tmp_path):
    (tmp_path / "a.txt").write_text(make_text(200), encoding="utf-8")
    r = CliRunner().invoke(app, ["train", str(tmp_path / "a.txt"), "--out", str(tmp_path / "runs"), "--precision",
                                 "bf16", "--max-steps", "2", "--hidden", "16", "--embed", "8", "-q"])
    one_line_error(r, 1, "--precision bf16 cannot train this model on this CPU", "use --precision fp32 or auto")


def test_a_step_the_threads_probe_timed_too_long_for_max_times_share_is_not_measured_at_all(monkeypatch):
    """The threads' probe already timed an fp32 step (of PROBE_STEPS time steps): where the precision's steps would
    not fit --max-time's share, not one bf16 step is taken (on a Zen 4 a big LSTM's first bf16 step took 7 s)."""
    from charnn.config import TrainConfig
    from charnn.training import choices
    from charnn.training.threads import PROBE_STEPS, ThreadChoice

    monkeypatch.setattr(P, "native_bf16", lambda device: (True, ""))
    monkeypatch.setattr(P, "_load_cache", lambda: {})
    monkeypatch.setattr(P, "_runs", lambda *a, **k: pytest.fail("a bf16 step was taken"))
    model = CharRNN(ModelConfig(vocab_size=12, **TINY_MODEL))
    x = torch.randint(0, 12, (4, 4 * PROBE_STEPS))
    dist = types.SimpleNamespace(active=False)
    threads = ThreadChoice(2, "measured", {1: 0.3, 2: 0.2})  # a full step: 4 x 0.2 s; seven of them: 5.6 s
    cfg = TrainConfig(precision="auto", max_time=60.0)  # 5%: 3 s
    choice = choices.run_precision(cfg, None, model, x, x, {}, CPU, threads, dist)
    assert (choice.precision, choice.how) == ("fp32", "unmeasured") and "0.8 s" in choice.reason
    measured = []
    monkeypatch.setattr(P, "_measure", lambda *a, **k: measured.append(k) or P.PrecisionChoice("bf16", "measured"))
    assert choices.run_precision(replace(cfg, max_time=600.0), None, model, x, x, {}, CPU, threads, dist).how \
        == "measured" and measured[0]["step"] == pytest.approx(0.8)  # 30 s: room to measure
