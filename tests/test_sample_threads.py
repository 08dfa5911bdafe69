"""Sampling's CPU threads (charnn.threadwatch): the measured choice on a fake clock (a quiet machine, a busy
core, a core taken while sampling, a core freed), `--threads` fixed, and torch's thread count put back after."""

import random

import pytest
import torch

from charnn.device import torch_threads
from charnn import threadwatch as th
from charnn.generation.sampler import Sampler
from charnn.sampling import SampleConfig


class Machine:
    """A fake clock whose blocks take `cost[threads]` seconds per token (changed by the test as load comes and
    goes), and a record of the thread counts set."""

    def __init__(self, cost, noise=None):
        self.cost, self.now, self.threads, self.set, self.noise = dict(cost), 0.0, None, [], noise
        self.spent = {}  # seconds spent at each thread count

    def clock(self):
        return self.now

    def set_threads(self, n):
        self.threads = n
        self.set.append(n)

    def block(self, watch, tokens=32):
        def run():
            seconds = self.cost[self.threads] * tokens * (self.noise() if self.noise else 1.0)
            self.now += seconds
            self.spent[self.threads] = self.spent.get(self.threads, 0.0) + seconds
        watch.block(run, lambda _: tokens)


def run(machine, watch, blocks):
    for _ in range(blocks):
        machine.block(watch)


def test_a_quiet_machine_keeps_the_threads_and_a_busy_one_takes_one():
    quiet = Machine({4: 1e-4, 1: 3e-4})
    watch = th.ThreadWatch(4, quiet.clock, quiet.set_threads)
    run(quiet, watch, 1 + 2 * th.ROUNDS + 20)
    assert watch.choices == [4] and watch.threads == 4 and quiet.threads == 4
    run(quiet, watch, 2000)  # on the most threads no clock measures again (a core taken shows as a jump): no blocks
    assert watch.choices == [4] and quiet.set.count(1) == 1 + th.ROUNDS  # on one thread but the first measurement's
    busy = Machine({2: 5e-3, 1: 2e-4})  # one of two cores taken: two threads 25x slower
    watch = th.ThreadWatch(2, busy.clock, busy.set_threads)
    run(busy, watch, 3)  # the first block (warm-ups), then one block each is enough (DROP)
    assert watch.choices == [1] and busy.threads == 1
    assert busy.set[1:3] == [2, 1]  # measured both


def test_a_noisy_busy_machine_is_not_measured_again_and_again():
    """Under a load that comes and goes (each block's time times a log-normal factor), blocks on the busy count take
    300x longer: measuring again at every noisy jump would spend most of the time there."""
    for seed in range(3):
        rng = random.Random(seed)
        m = Machine({2: 0.3 / 32, 1: 0.001 / 32}, noise=lambda: rng.lognormvariate(0, 0.5))
        watch = th.ThreadWatch(2, m.clock, m.set_threads)
        assert watch.block(lambda: 1, lambda _: 1) == 1 and m.set == [1]  # the warm-up block: on one thread
        while m.now < 10:
            m.block(watch)
        assert set(watch.choices) == {1} and len(watch.choices) <= 6, watch.choices
        assert m.spent[2] < 2.5, m.spent  # (every measurement: a block on two threads)


def test_blocks_one_after_another_set_the_speed_to_watch():
    """Blocks that took turns with the other count measured one thread slower than it runs alone: the first window
    after the choice sets the speed, and no jump follows."""
    m = Machine({2: 1e-3, 1: 2e-4})
    watch = th.ThreadWatch(2, m.clock, m.set_threads)
    run(m, watch, 3)
    watch.baseline = 1.7 * 2e-4  # (as if measured 1.7x slower than it runs)
    run(m, watch, th.WINDOW + 200)
    assert watch.choices == [1] and watch.baseline == pytest.approx(2e-4)


def test_a_jump_waits_for_its_share_of_the_wait():
    m = Machine({2: 1e-4, 1: 2e-4})
    watch = th.ThreadWatch(2, m.clock, m.set_threads)
    run(m, watch, 1 + 2 * th.ROUNDS + th.WINDOW)
    assert watch.choices == [2] and watch.settled and watch.baseline == pytest.approx(1e-4)
    m.cost = {2: 3e-3, 1: 2e-4}  # a core taken at once: slower by 30x, but too soon after the choice
    run(m, watch, th.WINDOW)
    assert watch.plan == [] and m.now - watch.chosen_at < th.JUMP_SHARE * watch.wait
    run(m, watch, 2 + 2 * th.ROUNDS)
    assert watch.choices == [2, 1]


def test_more_threads_must_be_clearly_faster():
    m = Machine({2: 1.0e-4, 1: 1.02e-4})  # 2% apart: one thread (fewer suffer less from a busy core)
    watch = th.ThreadWatch(2, m.clock, m.set_threads)
    run(m, watch, 1 + 2 * th.ROUNDS)
    assert watch.choices == [1]


def test_a_core_taken_while_sampling_is_noticed():
    m = Machine({2: 1e-4, 1: 2e-4})
    watch = th.ThreadWatch(2, m.clock, m.set_threads)
    run(m, watch, 1 + 2 * th.ROUNDS + 3)
    assert watch.choices == [2]
    m.cost = {2: 3e-3, 1: 2e-4}  # another process takes a core
    run(m, watch, th.WINDOW + 2 * th.ROUNDS)
    assert watch.choices == [2, 1] and m.threads == 1


def test_on_one_thread_a_freed_core_is_found_by_the_clock():
    m = Machine({2: 3e-3, 1: 2e-4})
    watch = th.ThreadWatch(2, m.clock, m.set_threads)
    run(m, watch, 3)
    assert watch.choices == [1]
    wait = watch.wait
    m.cost = {2: 1e-4, 1: 2e-4}  # the other process left: one thread's speed does not change, no jump shows it
    blocks = int(wait / (2e-4 * 32)) + 2 + 2 * th.ROUNDS
    run(m, watch, blocks)
    assert watch.choices == [1, 2] and m.threads == 2


def test_one_thread_winning_again_and_again_is_checked_less_often():
    m = Machine({2: 3e-3, 1: 2e-4})
    watch = th.ThreadWatch(2, m.clock, m.set_threads)
    run(m, watch, 3)
    first = watch.wait
    run(m, watch, int(first / (2e-4 * 32)) + 5)
    assert watch.choices == [1, 1] and watch.wait == 2 * first


def test_only_a_cpu_with_more_than_one_thread_and_no_fixed_count_is_watched():
    with torch_threads(2):
        assert th.watching(None, torch.device("cpu")) is not None
        assert th.watching(3, torch.device("cpu")) is None
        assert th.watching(None, torch.device("cuda")) is None
    with torch_threads(1):
        assert th.watching(None, torch.device("cpu")) is None


def test_blocks_that_make_no_text_are_not_timed():
    """A long prompt's prefill runs in steps that make no text: timing them would compare two equal time caps."""
    m = Machine({2: 1e-4, 1: 3e-4})
    watch = th.ThreadWatch(2, m.clock, m.set_threads)
    for _ in range(10):
        watch.block(lambda: setattr(m, "now", m.now + 0.25), lambda _: 0)
    assert watch.choices == [] and watch.skip == 1
    run(m, watch, 1 + 2 * th.ROUNDS)
    assert watch.choices == [2]


def test_an_early_decision_and_the_choice_agree():
    """A slow first block (noise) does not decide early: the medians decide both when and what."""
    m = Machine({2: 1e-4, 1: 4e-4})
    watch = th.ThreadWatch(2, m.clock, m.set_threads)
    m.block(watch)  # warm-up
    m.cost[2] = 10e-4
    m.block(watch)  # a slow first block at 2 threads (noise), then fast ones
    m.cost[2] = 1e-4
    run(m, watch, 2 * th.ROUNDS - 1)
    assert watch.choices == [2]


@pytest.fixture
def two_threads():
    with torch_threads(2):
        yield


@pytest.mark.parametrize("threads,measure", [(None, True), (1, True), (None, False)])
def test_sampling_puts_torchs_thread_count_back(trained_run, two_threads, threads, measure):
    from charnn.api import load
    model = load(str(trained_run.run_dir))
    cfg = SampleConfig(length=300, seed=3, threads=threads).validate()
    sampler = Sampler(model.net, model.tokenizer, cfg, torch.device("cpu"), 3, measure=measure)
    text = "".join(sampler)
    assert len(text) == 300 and torch.get_num_threads() == 2
    assert (sampler.watch is not None) == (measure and threads is None)  # training's previews: not measured


def test_a_sample_stopped_early_or_a_count_changed_meanwhile(trained_run, two_threads):
    from charnn.api import load
    model = load(str(trained_run.run_dir))
    cfg = SampleConfig(length=3000, seed=3, threads=1).validate()
    pieces = iter(Sampler(model.net, model.tokenizer, cfg, torch.device("cpu"), 3, measure=True))
    next(pieces), next(pieces)
    assert torch.get_num_threads() == 1
    pieces.close()  # the consumer stops: torch's count comes back
    assert torch.get_num_threads() == 2
    pieces = iter(Sampler(model.net, model.tokenizer, cfg, torch.device("cpu"), 3, measure=True))
    next(pieces), next(pieces)
    torch.set_num_threads(3)  # someone else's choice, made while sampling: kept
    list(pieces)
    assert torch.get_num_threads() == 3


def test_a_bad_thread_count_is_one_clear_error():
    from charnn.errors import ConfigError
    with pytest.raises(ConfigError, match="--threads"):
        SampleConfig(threads=0).validate()


def test_more_threads_than_cores_is_a_note_and_adapt_runs_on_the_threads_given(trained_run, tmp_path, monkeypatch):
    import os

    from typer.testing import CliRunner

    from charnn.api.model import Model
    from charnn.cli.app import app
    seen = []
    adapt = Model.adapt
    monkeypatch.setattr(Model, "adapt", lambda self, *a, **k: seen.append(torch.get_num_threads()) or
                        adapt(self, *a, **k))
    text = tmp_path / "adapt.txt"
    text.write_text("the cat sat on the mat\n" * 20)
    many = (os.cpu_count() or 1) + 1
    with torch_threads(1):
        r = CliRunner().invoke(app, ["sample", str(trained_run.run_dir), "--length", "20", "--seed", "1",
                                     "--threads", str(many), "--adapt", str(text)])
        assert r.exit_code == 0, r.stderr
        assert seen == [many]  # --threads holds for the adapting pass too
        assert f"--threads {many} is more than this machine's" in r.stderr
        assert torch.get_num_threads() == 1  # put back
