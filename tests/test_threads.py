"""Threads chosen by measurement (charnn.training.threads), and a --max-time that holds on a slow machine.

No test here asserts a real speed: the chooser runs on fake step timers, and the budget tests run the real
trainer on a fake clock that every forward call of the model advances (a busy machine, made deterministic)."""

import math
import types

from dataclasses import replace

import pytest
import torch
from conftest import TINY_MODEL, TINY_TRAIN, make_text

from charnn.config import ModelConfig, TrainConfig
from charnn.data.corpus import Corpus
from charnn.models.lm import CharRNN
from charnn.training import threads as T
from charnn.training.trainer import Trainer


class FakeMachine:
    """A step function and a clock: a step at n threads takes seconds[n] of fake time."""

    def __init__(self, seconds):
        self.seconds, self.now, self.n, self.steps = dict(seconds), 0.0, None, {}

    def set_threads(self, n):
        self.n = n

    def step(self):
        self.steps[self.n] = self.steps.get(self.n, 0) + 1
        self.now += self.seconds[self.n]

    def clock(self):
        return self.now


def measured(seconds, counts=None):
    m = FakeMachine(seconds)
    times = T.measure(m.step, counts or sorted(seconds), 1.0, m.set_threads, m.clock)
    return T.pick(times), times, m


def test_candidates_are_powers_of_two_and_the_core_count():
    assert T.candidates(1) == [1]
    assert T.candidates(2) == [1, 2]
    assert T.candidates(6) == [1, 2, 4, 6]
    assert T.candidates(8) == [1, 2, 4, 8]


def test_the_fastest_count_wins_and_a_busy_core_loses():
    # idle: two threads are faster; one core busy: two threads are 40x slower than one (the case)
    assert measured({1: 0.030, 2: 0.020})[0] == 2
    assert measured({1: 0.030, 2: 1.200})[0] == 1
    # fewer threads win a near tie (within MIN_GAIN): they suffer less when a core gets busy
    assert measured({1: 0.030, 2: 0.029, 4: 0.0295})[0] == 1
    assert measured({1: 0.040, 2: 0.021, 4: 0.020})[0] == 2


def test_a_hopeless_count_costs_one_step_not_a_budget():
    n, times, m = measured({1: 0.01, 2: 2.0})
    assert n == 1 and m.steps[2] == 1  # its warm-up was DROP times the best: out at once
    assert m.steps[1] == T.MAX_ROUNDS + 1  # warm-up and every round (7 x 10 ms fit the 1-s budget)
    assert times[2] == pytest.approx(2.0)


def test_measuring_keeps_to_its_budget():
    n, times, m = measured({1: 0.3, 2: 0.25})
    assert n == 2
    assert m.now < 2 * (0.3 + 0.25) + 1.0 + 0.3 + 0.25 + 1e-9  # warm-ups, first round, budget, one round over


def test_watch_asks_again_after_a_jump_and_backs_off_when_nothing_changed():
    clock = FakeMachine({}).clock
    w = T.Watch(clock=clock, window=4, ratio=1.6, every=math.inf)
    asked = [w.observe(1.0) for _ in range(12)]  # baseline from the first 4, steady after
    assert not any(asked)
    asked = [w.observe(2.0) for _ in range(4)]  # another process took a core: the rolling median doubles
    assert asked[-1] and not any(asked[:-2])
    w.restart(changed=False)  # the re-measure kept the same count: the next jump must wait twice as long
    assert w.gap == 16
    asked = [w.observe(3.0) for _ in range(4)] + [w.observe(6.0) for _ in range(11)]
    assert not any(asked)
    assert w.observe(6.0)  # 16 steps after the restart
    w.restart(changed=True)
    assert w.gap == 8
    assert not any(w.observe(1.0) for _ in range(4)) and not any(w.observe(1.0 / 1.7) for _ in range(3))
    assert w.observe(1.0 / 1.7)  # faster by RECHECK_RATIO counts too: a load left, more threads may pay again


def test_on_fewer_threads_the_watch_asks_again_by_the_clock_sooner_and_backs_off():
    """A load took a core and left: one thread's step time did not move, so only the clock can notice. The watch
    asks after RECHECK_FEWER_SECS, then twice as long after each re-measure that kept the count, up to
    RECHECK_SECS; back on the most threads, RECHECK_SECS again."""
    now = {"t": 0.0}
    w = T.Watch(clock=lambda: now["t"], window=4, ratio=1.6, every=300.0, fewer=True, fewer_every=30.0)

    def asked_after(seconds: float) -> bool:
        start = now["t"]
        for _ in range(4):
            w.observe(1.0)
        now["t"] = start + seconds - 0.5
        early = w.observe(1.0)
        now["t"] = start + seconds
        return not early and w.observe(1.0)

    assert asked_after(30)
    w.restart(changed=False, fewer=True)  # still busy: wait twice as long
    assert asked_after(60)
    for expected in (120, 240, 300, 300):
        w.restart(changed=False, fewer=True)
        assert asked_after(expected)
    w.restart(changed=True, fewer=False)  # the load left: the most threads again, the usual wait
    assert asked_after(300)
    w.restart(changed=True, fewer=True)  # busy again: soon again
    assert asked_after(30)
    assert T.ThreadChoice(1, "measured", {1: 0.2, 2: 0.4}).fewer
    assert not T.ThreadChoice(2, "measured", {1: 0.4, 2: 0.2}).fewer and not T.ThreadChoice(1, "single").fewer


@pytest.fixture
def two_cores(monkeypatch):
    monkeypatch.setattr(T, "usable_cores", lambda local=1: 2)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture
def fake_threads(monkeypatch, two_cores):
    """torch's thread count as the trainer sees it, kept apart from the real one (1, so real work is quick
    whatever else the machine runs): no assertion below depends on how fast this machine really is."""
    torch.set_num_threads(1)
    fake = {"n": 2}
    monkeypatch.setattr(torch, "set_num_threads", lambda n: fake.__setitem__("n", n))
    monkeypatch.setattr(torch, "get_num_threads", lambda: fake["n"])
    return fake


def test_training_runs_with_the_measured_count_and_measures_again_when_the_step_time_jumps(tmp_path, monkeypatch,
                                                                                           fake_threads):
    # before step 40 two threads are fast; then "another process takes a core" and they are slow
    import time

    loaded = {"now": False}

    def cost():
        time.sleep(0.05 if fake_threads["n"] == (2 if loaded["now"] else 1) else 0.002)

    probe_step = T.StepProbe.step
    monkeypatch.setattr(T.StepProbe, "step", lambda self, x, y: (cost(), probe_step(self, x, y))[1])
    train_step = Trainer._train_step
    monkeypatch.setattr(Trainer, "_train_step", lambda self, *a: (cost(), train_step(self, *a))[1])
    seen, events = {}, []

    def on_event(kind, info):
        if kind == "step":
            seen[info["step"]] = fake_threads["n"]
            loaded["now"] = info["step"] >= 40
        if kind in ("threads", "start"):
            events.append((kind, info))

    cfg = TrainConfig(out=str(tmp_path), name="t", **{**TINY_TRAIN, "max_steps": 130, "eval_every": 1000})
    fake_threads["n"] = 7  # what the caller had: fit puts it back
    trainer = Trainer(Corpus(make_text(200, seed=1), "t", "t"), ModelConfig(vocab_size=1, **TINY_MODEL), cfg,
                      on_event)
    assert trainer.threads_choice.how == "measured" and trainer.threads_choice.threads == 2
    trainer.fit()
    assert events[0][1]["threads_choice"]["threads"] == 2  # the start event says what was chosen, and why
    assert seen[1] == seen[39] == 2
    rechecks = [info for kind, info in events if kind == "threads"]
    assert rechecks and rechecks[0]["threads"] == 1 and rechecks[0]["before"] == 2
    assert 40 < rechecks[0]["step"] <= 40 + 2 * T.WINDOW
    assert seen[130] == 1
    assert fake_threads["n"] == 7


def test_threads_flag_is_taken_as_given(tmp_path, fake_threads):
    cfg = TrainConfig(out=str(tmp_path), name="t", **{**TINY_TRAIN, "max_steps": 3, "threads": 1})
    trainer = Trainer(Corpus(make_text(50), "t", "t"), ModelConfig(vocab_size=1, **TINY_MODEL), cfg)
    assert (trainer.threads_choice.how, trainer.threads_choice.threads, trainer.watch) == ("forced", 1, None)


def test_a_resumed_run_keeps_the_thread_count_it_trained_with(tmp_path, monkeypatch, fake_threads):
    """As it keeps its precision: on a big model another count rounds differently, so the resumed steps would
    not be the ones the run would have taken. Measured once, saved in last.pt, taken back without measuring."""
    cfg = TrainConfig(out=str(tmp_path), name="t", **{**TINY_TRAIN, "max_steps": 6, "eval_every": 3})
    corpus = Corpus(make_text(60, seed=2), "t", "t")
    first = Trainer(corpus, ModelConfig(vocab_size=1, **TINY_MODEL), cfg)
    assert first.threads_choice.how == "measured"
    first.fit()
    saved = torch.load(tmp_path / "t" / "last.pt", weights_only=True)["threads"]
    assert saved == first.threads_choice.threads
    monkeypatch.setattr("charnn.training.choices.choose_threads", lambda *a, **k: pytest.fail("measured again"))
    fake_threads["n"] = 3 - saved  # the other count, so keeping it is seen
    again = Trainer(corpus, ModelConfig(vocab_size=1, **TINY_MODEL), replace(cfg, max_steps=9), resume=True)
    assert (again.threads_choice.how, again.threads_choice.threads, again.watch) == ("resumed", saved, None)
    assert fake_threads["n"] == saved


# -- --max-time on a busy machine: a fake clock that the model's forward calls advance ----------------------------

class FakeTime:
    def __init__(self):
        self.now = 1000.0

    def perf_counter(self):
        return self.now


@pytest.fixture
def fake_clock(monkeypatch):
    """Every forward of a CharRNN costs `per_token` fake seconds per (row x time step), and the trainer's
    clock is that fake clock: training, evaluation and the probes all take time that the test decides."""
    import charnn.training.trainer as trainer_module

    clock = FakeTime()
    clock.per_token = 1e-3
    forward = CharRNN.forward

    def slow_forward(self, x, *a, **k):
        clock.now += clock.per_token * x.numel()
        return forward(self, x, *a, **k)

    monkeypatch.setattr(CharRNN, "forward", slow_forward)
    monkeypatch.setattr(trainer_module, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))
    return clock


def timed_run(tmp_path, clock, max_time, on_step=None, **train):
    def on_event(kind, info):
        if kind == "step" and on_step:
            on_step(info["step"], clock)
    cfg = TrainConfig(out=str(tmp_path), name="timed", **{**TINY_TRAIN, "max_steps": None, "max_time": max_time,
                                                           "eval_every": 1000, "threads": 1, **train})
    # 3000 lines: about 10k validation characters, so an evaluation (~10 s here) outlasts many steps (~0.26 s)
    trainer = Trainer(Corpus(make_text(3000, seed=1), "t", "t"), ModelConfig(vocab_size=1, **TINY_MODEL), cfg,
                      on_event)
    start = clock.now - trainer.elapsed()
    result = trainer.fit()
    return result, clock.now - start


def tolerance(max_time):
    return max(0.02 * max_time, 5.0)


@pytest.mark.parametrize("max_time", [30.0, 120.0])
def test_max_time_keeps_room_for_a_final_evaluation_that_no_evaluation_has_timed(tmp_path, fake_clock, max_time):
    # no periodic evaluation runs before the limit (eval_every 1000): the budget must foresee the final one
    result, took = timed_run(tmp_path, fake_clock, max_time)
    assert result.stopped == "max_time" and result.steps > 10
    assert took <= max_time + tolerance(max_time), took
    assert took >= max_time - 0.25 * max_time  # and it used most of the budget


def test_max_time_holds_when_steps_turn_slow_mid_run(tmp_path, fake_clock):
    # at step 30 another process takes the core: every forward costs 8x as much (steps ~2 s, evaluation ~160 s
    # at that rate); the run must still end within the tolerance of a 5-minute budget
    def on_step(step, clock):
        if step == 30:
            clock.per_token = 8e-3
    result, took = timed_run(tmp_path, fake_clock, 300.0, on_step)
    assert result.stopped == "max_time"
    assert took <= 300.0 + tolerance(300.0), took


def test_a_periodic_evaluation_that_would_cross_the_limit_is_the_final_one(tmp_path, fake_clock):
    # evaluations every 40 steps (~10 s of training, ~20 s of evaluation): one that would end past the limit is
    # not started; training stops there and the final evaluation takes its place
    result, took = timed_run(tmp_path, fake_clock, 90.0, eval_every=40)
    assert result.stopped == "max_time"
    assert took <= 90.0 + tolerance(90.0), took


def test_the_command_lines_clock_starts_with_the_process(tmp_path, monkeypatch, corpus_file):
    """Imports and corpus loading count in --max-time: on a busy machine importing torch alone took 6 s."""
    from typer.testing import CliRunner

    import charnn.training.stopping as stopping
    from charnn.cli import app

    assert 0 < stopping.process_age() < 10 ** 7
    monkeypatch.setattr(stopping, "process_age", lambda: 50.0)  # the process started 50 s ago
    r = CliRunner().invoke(app, ["train", str(corpus_file), "--out", str(tmp_path), "--max-time", "45s", "--hidden",
                                 "16", "--embed", "8", "--batch-size", "4", "--seq-len", "16", "--device", "cpu", "-q"])
    assert r.exit_code == 0, r.stderr
    last = torch.load(tmp_path / "tiny" / "last.pt", weights_only=True)
    assert last["step"] == 0 and last["elapsed"] >= 50  # already over budget: no step, the final evaluation only


def test_measuring_keeps_to_a_limit_that_counts_the_warm_ups():
    """--max-time's share (charnn.training.choices.SHARE): a count whose steps would not fit is not measured."""
    m = FakeMachine({1: 0.3, 2: 0.2})
    times = T.measure(m.step, [1, 2], 1.0, m.set_threads, m.clock, limit=1.0)
    assert times == {1: pytest.approx(0.3)} and 2 not in m.steps  # 0.6 s spent; 2's two steps would end past 1 s
    m = FakeMachine({1: 3.0, 2: 1.6})
    assert T.measure(m.step, [1, 2], 1.0, m.set_threads, m.clock, limit=5.0) == {} and m.now == 3.0  # warm-up only
    m = FakeMachine({1: 0.01, 2: 0.01})
    times = T.measure(m.step, [1, 2], 1.0, m.set_threads, m.clock, limit=0.1)
    assert set(times) == {1, 2} and m.now <= 0.1 + 1e-9  # the rounds stop where the next would end past it
    assert T.measure(m.step, [1, 2], 1.0, m.set_threads, m.clock) and m.steps[1] > 4  # no limit: as before


def test_a_step_too_long_to_measure_in_max_times_share_is_not_measured(tmp_path, monkeypatch, fake_clock,
                                                                       fake_threads):
    """A big model on a small CPU: a training step takes seconds, so timing thread counts (a warm-up and rounds
    each) and precisions (seven steps) spent 12 s of a 30-s run (a 2x1024 LSTM on a 2-core EPYC), and a 2x2048
    one's 30-s run took 78 s. Each measurement keeps to its share of --max-time; what does not fit is not measured:
    all the cores, fp32 (and nothing is cached as measured)."""
    from charnn.training import choices
    from charnn.training import precision as P

    import time

    fake = types.SimpleNamespace(perf_counter=fake_clock.perf_counter, strftime=time.strftime)
    monkeypatch.setattr(T, "time", fake)
    monkeypatch.setattr(P, "time", fake)
    monkeypatch.setattr(P, "native_bf16", lambda device: (True, ""))  # (measured wherever the suite runs)
    monkeypatch.setattr(P, "_runs", lambda model, x, y, device, precision, extra=None:
                        P.StepProbe(model, device, "fp32", extra).step(x, y) and None)
    fake_clock.per_token = 8e-3  # a step's forward (8 x 32 tokens) takes ~2 s
    max_time = 100.0
    cfg = TrainConfig(out=str(tmp_path), name="big", **{**TINY_TRAIN, "max_steps": None, "max_time": max_time,
                                                        "eval_every": 1000, "precision": "auto"})
    cached = P._load_cache()
    trainer = Trainer(Corpus(make_text(600, seed=1), "t", "t"), ModelConfig(vocab_size=1, **TINY_MODEL), cfg)
    assert (trainer.threads_choice.how, trainer.threads_choice.threads) == ("unmeasured", 2)
    assert (trainer.precision_choice.how, trainer.precision_choice.precision) == ("unmeasured", "fp32")
    assert trainer.watch is None and P._load_cache() == cached
    step = 8 * 32 * fake_clock.per_token
    assert trainer.elapsed() <= 2 * choices.SHARE * max_time + step + 1.0  # (+ the evaluation's probe)
    result = trainer.fit()
    assert result.stopped == "max_time" and result.steps > 5
    assert result.elapsed <= max_time + tolerance(max_time)


def test_validation_too_long_for_max_time_is_cut_to_fit_and_the_cut_is_the_runs(tmp_path, fake_clock):
    """A new run without --eval-tokens whose whole validation pass would take more than schedule.EVAL_SHARE of
    --max-time scores the val tokens that fit (at least EVAL_FLOOR): the run keeps to its time and trains. The cut
    is saved as the run's --eval-tokens (a resume scores the same tokens); --eval-tokens given is kept as given."""
    from charnn.training import schedule

    fake_clock.per_token = 2e-4
    corpus = Corpus(make_text(12000, seed=1), "t", "t")  # ~40k val tokens: a pass takes ~8 s here

    def trainer(name, max_time, explicit, resume=False, **train):
        cfg = TrainConfig(out=str(tmp_path), name=name, **{**TINY_TRAIN, "max_steps": None, "max_time": max_time,
                                                            "eval_every": 1000, "threads": 1, **train})
        return Trainer(corpus, ModelConfig(vocab_size=1, **TINY_MODEL), cfg, explicit=explicit, resume=resume)

    given = trainer("given", 30.0, {"eval_tokens"})  # given (here: the default, typed): all of them
    whole = len(given.val_ids)
    given.release()
    run = trainer("cut", 30.0, set())
    n = len(run.val_ids)
    assert schedule.EVAL_FLOOR <= n < 0.6 * whole and run.cfg.eval_tokens == n
    assert run.val_cut["tokens"] == n and run.val_cut["of"] == whole
    start = fake_clock.now - run.elapsed()
    result = run.fit()
    assert result.stopped == "max_time" and result.steps > 10
    assert fake_clock.now - start <= 30.0 + tolerance(30.0)
    assert torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["train_config"]["eval_tokens"] == n
    again = trainer("cut", 60.0, {"max_time"}, resume=True)  # another budget: the run's own yardstick all the same
    assert len(again.val_ids) == n and getattr(again, "val_cut", None) is None
    again.release()
    roomy = trainer("roomy", 600.0, set())
    assert len(roomy.val_ids) == whole  # a pass fits 10% of 10 minutes: no cut
    roomy.release()


def test_a_labelled_runs_validation_is_foreseen_and_cut_over_every_label(tmp_path, fake_clock):
    """--label-by file streams its validation as a plain model does, but --max-time foresaw none of it (a 2x1024
    kjv run of 30 s ran over 125 s): it is probed and cut as a plain run's, and the cut (as --eval-tokens's) keeps
    a share of every label's tail (the first N tokens were the first labels' alone: no val score for the rest)."""
    from charnn.data.labels import load_labelled

    fake_clock.per_token = 2e-4
    for i, lang in enumerate(("a", "b", "c")):
        (tmp_path / f"{lang}.txt").write_text(make_text(4000, seed=i), encoding="utf-8")
    files = [str(tmp_path / f"{x}.txt") for x in "abc"]

    def trainer(name, explicit, resume=False, **train):
        cfg = TrainConfig(out=str(tmp_path / "runs"), name=name, **{**TINY_TRAIN, "max_steps": None,
                                                                     "eval_every": 1000, "threads": 1, **train})
        return Trainer(load_labelled(files, "file"), ModelConfig(vocab_size=1, **TINY_MODEL), cfg, explicit=explicit,
                       resume=resume)

    whole = trainer("whole", set())
    n_all = len(whole.val_ids)
    whole.release()
    run = trainer("cut", set(), max_time=30.0)
    n = len(run.val_ids)
    assert n < 0.6 * n_all and 0 <= run.cfg.eval_tokens - n < 3 and run.val_cut["of"] == n_all  # (a share a label)
    assert all(c > 0.5 * n / 3 for c in run.task.val_label_chars)  # (each label's share: its tail is a third)
    start = fake_clock.now - run.elapsed()
    result = run.fit()
    assert result.stopped == "max_time" and result.steps > 10
    assert fake_clock.now - start <= 30.0 + tolerance(30.0)
    again = trainer("cut", {"max_time"}, resume=True, max_time=60.0)  # the same tokens on a resume
    assert (again.val_ids == run.val_ids).all() and again.task.val_label_chars == run.task.val_label_chars
    again.release()
    given = trainer("given", {"eval_tokens"}, eval_tokens=run.cfg.eval_tokens)  # --eval-tokens: the same spread
    assert (given.val_ids == run.val_ids).all()
    given.release()


def test_a_count_out_as_too_slow_does_not_end_the_measuring_nor_send_training_to_all_cores():
    """One core busy: 1 thread 5 ms a step, 2 threads 1.7 s (this machine saw 5 ms against 1,710 ms). The slow count's
    step was taken as what the next would cost, so measuring stopped and training took all the cores, unmeasured."""
    m = FakeMachine({1: 0.005, 2: 1.7, 4: 1.0})
    times = T.measure(m.step, [1, 2, 4], 1.0, m.set_threads, m.clock, limit=3.0)
    assert set(times) == {1, 2, 4} and T.decide(times, [1, 2, 4]).threads == 1
    busy = T.decide({1: 0.005, 2: 1.7}, [1, 2, 4])  # time ran out after a count was out: the fastest, measured
    assert (busy.threads, busy.how) == (1, "measured")
    idle = T.decide({1: 0.3}, [1, 2, 4])  # time ran out on slow steps, nothing out: all the cores
    assert (idle.threads, idle.how) == (4, "unmeasured")


@pytest.mark.parametrize("bound", ["steps", "tokens"])
def test_a_validation_cut_is_taken_only_where_it_is_foreseen_to_cost_less(monkeypatch, bound):
    """Fewer tokens are fewer streams, and longer ones (40,000: 19 x 2,105; 5,714: 2 x 2,857): where a pass costs
    by its time steps (a big model reading its weights each step) the proportional cut cost more than the whole
    pass, and was taken; now each cut is foreseen first, and where it does not pay, one stream is the last try.
    Where a pass costs by its tokens, the proportional cut is taken."""
    from charnn.scoring.evaluate import stream_layout
    from charnn.training import schedule

    def probe(self, model, world, device, precision, clock=None):
        streams, length = stream_layout(self.val_tokens)
        self.eval_cost = 0.01 * length if bound == "steps" else 5e-4 * self.val_tokens

    monkeypatch.setattr(schedule.Budget, "probe_eval", probe)
    task = types.SimpleNamespace(val_units=40000, kept=None, probes_eval=True, probe_select=lambda *a: None)
    task.keep_validation = lambda n: setattr(task, "kept", n)
    t = types.SimpleNamespace(task=task, val_ids=range(40000), model=None, device=None, precision="fp32",
                              cfg=TrainConfig(max_time=30.0),
                              dist=types.SimpleNamespace(active=False, any=bool, world=1))
    budget = schedule.foresee_eval(t, fit=True)
    if bound == "steps":  # whole: 21.05 s; the proportional cut 28.6 s (not taken); one stream of 2,048: 20.5 s
        assert task.kept == schedule.EVAL_FLOOR and budget.eval_cost == pytest.approx(20.48)
    else:  # whole: 20 s, over 10% of 30 s: 6,000 tokens, 3 s
        assert task.kept == 6000 and budget.eval_cost == pytest.approx(3.0)
    assert t.cfg.eval_tokens == task.kept and t.val_cut["of"] == 40000


def test_under_torchrun_the_clock_starts_with_the_launcher(monkeypatch):
    """A torchrun worker's clock started with the worker: the launcher's start-up and rendezvous (~2 s of a 20-s
    run) were outside --max-time. Under torchrun (TORCHELASTIC_RUN_ID) the age is its parent's, the launcher's."""
    import charnn.training.stopping as stopping

    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    own = stopping.process_age()
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")
    monkeypatch.setattr(stopping.os, "getppid", lambda: 1)  # (a parent surely older than this process: init)
    assert stopping.process_age() > own + 0.05 > 0.05
