"""The Python API (`charnn.load`, `Model.generate/stream/score`, `charnn.train`) and the continuous-batching
generator under it: same text as `charnn sample`, rows that join and leave without changing each other's text."""

import json
import math
import re
import subprocess
import sys

import pytest
from conftest import ROOT, make_text, subprocess_env
from typer.testing import CliRunner

import charnn
from charnn.api import ParamError
from charnn.sampling import SampleConfig
from charnn.errors import CharnnError, ConfigError
from charnn.sampling import SamplingParams
from charnn.generation.batcher import Batcher, RowSpec, StopCut
from charnn.generation.sampler import Sampler


@pytest.fixture(scope="module")
def model(trained_run):
    return charnn.load(trained_run.run_dir, device="cpu")


def test_import_charnn_stays_light():
    code = "import sys, charnn; assert 'torch' not in sys.modules, 'torch'; print(charnn.load.__module__)"
    r = subprocess.run([sys.executable, "-c", code], env=subprocess_env(), capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "charnn.api.model", r.stderr


@pytest.mark.parametrize("temperature, top_k, top_p", [(1.0, None, None), (0.7, 5, None), (1.0, None, 0.9)])
def test_generate_gives_charnn_samples_text_for_the_same_seed(model, temperature, top_k, top_p):
    cfg = SampleConfig(length=300, prime="the dog", temperature=temperature, top_k=top_k, top_p=top_p)
    sampled = "".join(Sampler(model.net, model.tokenizer, cfg, model.device, 11))
    got = model.generate("the dog", length=300, temperature=temperature, top_k=top_k, top_p=top_p, seed=11)
    assert isinstance(got, str) and len(got) == 300 and sampled == "the dog" + got


@pytest.mark.parametrize("int8", [False, True])
def test_the_sample_command_and_the_api_are_one_code_path(trained_run, model, int8):
    """`charnn sample` (fixed rows, blocks of 32) and `Model.generate` (blocks of 8) draw through the same Batcher:
    the same seed gives the same text, in fp32 and with int8 weights; sample i of `-n` is choice i."""
    from charnn.cli import app

    args = ["sample", str(trained_run.run_dir), "--prime", "the ", "--length", "150", "--seed", "7", "-n", "2",
            "--separator", "|", "--temp", "0.8", "-q"] + (["--int8"] if int8 else [])
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.stderr
    api = charnn.load(trained_run.run_dir, device="cpu", int8=int8) if int8 else model
    got = api.generate("the ", length=150, temperature=0.8, n=2, seed=7)
    assert r.stdout.rstrip("\n").split("|") == ["the " + t for t in got]
    assert api.int8 == int8 and (api.batcher(2).stepper.kernel != "fp32") == int8  # really int8 weights


def test_int8_is_refused_off_the_cpu(trained_run, monkeypatch):
    import torch

    monkeypatch.setattr("charnn.api.model.resolve_device", lambda d: torch.device("cuda"))
    with pytest.raises(CharnnError, match="int8 generation is for the CPU; on cuda leave it out"):
        charnn.load(trained_run.run_dir, device="cuda", int8=True)


def test_generate_n_stop_stream_and_greedy(model):
    texts = model.generate("the", length=50, n=3, seed=4)
    assert isinstance(texts, list) and [len(t) for t in texts] == [50, 50, 50] and len(set(texts)) == 3
    assert texts[1] == model.generate("the", length=50, seed=5)  # choice i draws with seed + i
    cut = model.generate("the", length=200, seed=4, stop=["t", "\n"])
    assert "t" not in cut and "\n" not in cut and len(cut) < 200
    assert texts[0].startswith(cut)  # the same draw, cut right before the stop
    pieces = list(model.stream("the", length=80, seed=8))
    assert len(pieces) > 1 and "".join(pieces) == model.generate("the", length=80, seed=8)
    indexed = list(model.stream("the", length=20, n=2, seed=8))
    assert {i for i, _ in indexed} == {0, 1} and "".join(p for i, p in indexed if i == 0) == pieces[0] + "".join(
        pieces[1:])[:20 - len(pieces[0])]
    assert model.generate("the", length=40, temperature=0) == model.generate("the", length=40, top_k=1, seed=1)
    assert model.generate("the", length=0) == ""


def test_rows_joining_and_leaving_do_not_change_a_rows_text(model):
    alone = Batcher(model.net, model.tokenizer, model.device, capacity=1)
    row = alone.add(RowSpec("the cat", length=120, sampling=SamplingParams(seed=3)))
    text = ""
    while alone.active:
        text += "".join(piece for r, piece in alone.step())
    assert len(text) == 120 and row.finish_reason == "length"

    b = Batcher(model.net, model.tokenizer, model.device, capacity=16)
    early = [b.add(RowSpec("a dog", 30, SamplingParams(seed=s))) for s in range(3)]  # leave after 30 tokens
    mine, got = None, ""
    for step in range(200):
        if step == 3:
            mine = b.add(RowSpec("the cat", length=120, sampling=SamplingParams(seed=3)))  # joins a running batch
        if step == 5:
            late = [b.add(RowSpec("", 50, SamplingParams(0.5, top_k=3, seed=s))) for s in range(9)]  # grows it
        got += "".join(piece for r, piece in b.step(1 + step % 8) if r is mine)  # 1 to 8 tokens a call
        if not b.active:
            break
    assert got == text and mine.finish_reason == "length"
    assert all(r.finish_reason == "length" and r.chars == 30 for r in early)
    assert all(r.finish_reason == "length" and r.chars == 50 for r in late)
    assert b.active == 0 and b.stepper.B == 1  # every row left; the batch shrank back


def test_a_removed_row_frees_its_slot_and_the_others_carry_on(model):
    ref = Batcher(model.net, model.tokenizer, model.device, capacity=2)
    ref.add(RowSpec("the", length=60, sampling=SamplingParams(seed=1)))
    want = ""
    while ref.active:
        want += "".join(p for _, p in ref.step())
    b = Batcher(model.net, model.tokenizer, model.device, capacity=2)
    gone, kept = b.add(RowSpec("a dog", 60, SamplingParams(seed=2))), b.add(RowSpec("the", 60, SamplingParams(seed=1)))
    got = ""
    for step in range(100):
        if step == 5:
            b.remove(gone)  # its client left: the last row moves into its slot
            assert b.active == 1 and kept.slot == 0
        got += "".join(p for r, p in b.step() if r is kept)
        if not b.active:
            break
    assert got == want


def test_stop_cut_holds_back_a_stop_split_across_pieces():
    cut = StopCut(["END", "\n\n"])
    out = [cut.feed(p) for p in ["abc E", "N", "xE", "ND tail"]]
    assert out == ["abc", " ", "EN", "x"] and cut.done  # "E", "N" held until they could not start "END"
    assert StopCut([]).feed("anything") == "anything"


def test_stop_cut_does_not_depend_on_how_the_text_is_split():
    """With stops "e " and "ee w", "thee w" was cut before "ee w" when one piece held it all and before "e " when
    the pieces were single characters: a served row's text depended on the block size, i.e. on the other rows."""
    import random
    rng = random.Random(0)
    for _ in range(3000):
        text = "".join(rng.choice("abe w") for _ in range(rng.randint(0, 30)))
        stops = ["".join(rng.choice("abe w") for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(1, 4))]

        def run(sizes):
            cut, out, i = StopCut(stops), [], 0
            for n in sizes:
                out.append(cut.feed(text[i:i + n]))
                i += n
            return "".join(out) + ("" if cut.done else cut.flush()), cut.done, cut.after

        one = run([1] * len(text))[:2]  # (`after`: the characters of the last piece past the stop)
        cuts = sorted(rng.sample(range(1, len(text)), rng.randint(0, max(0, len(text) - 1)))) if len(text) > 1 else []
        sizes = [b - a for a, b in zip([0, *cuts], [*cuts, len(text)])]
        assert run(sizes)[:2] == one and run([len(text)])[:2] == one, (text, stops, sizes)
        ends = [text.find(s) + len(s) for s in stops if s in text]
        if ends:  # the first stop to be completed, cut at its start (the longest of those ending there)
            end = min(ends)
            start = min(text.find(s) for s in stops if s in text and text.find(s) + len(s) == end)
            assert one == (text[:start], True) and run([len(text)])[2] == len(text) - end
    cut = StopCut(["e ", "ee w"])
    assert cut.feed("thee w") == "the" and cut.after == 1


def test_score_is_what_eval_reports(model, trained_run, tmp_path):
    text = make_text(30, seed=9)
    (tmp_path / "held.txt").write_text(text, encoding="utf-8")
    from charnn.cli import app
    r = CliRunner().invoke(app, ["eval", str(trained_run.run_dir), str(tmp_path / "held.txt"), "--json",
                                 "--device", "cpu"])
    assert r.exit_code == 0, r.stderr
    reported = json.loads(r.stdout)
    mine = model.score(text).to_dict()
    assert {k: reported[k] for k in mine} == pytest.approx(mine)


def test_info_and_errors_name_the_parameter(model, trained_run):
    assert model.info["model"]["hidden"] == 64 and model.info["run_dir"] == str(trained_run.run_dir)
    with pytest.raises(ParamError, match="'é'") as e:
        model.generate("caf\u00e9")
    assert e.value.param == "prompt"
    for kw, param in ((dict(temperature=-1), "temperature"), (dict(top_p=1.5), "top_p"), (dict(n=0), "n"),
                      (dict(stop=["a"] * 5), "stop"), (dict(length=-1), "length")):
        with pytest.raises(ConfigError) as e:
            model.generate("the", **kw)
        assert e.value.param == param
    with pytest.raises(CharnnError, match="does not exist"):
        charnn.load(trained_run.run_dir / "nope.pt")
    for wrong in (5, b"run", ["run"]):  # (not "checkpoint '5' does not exist")
        with pytest.raises(CharnnError, match="takes a checkpoint's or a run's path"):
            charnn.load(wrong)


def test_train_from_python_reports_events_and_loads(tmp_path):
    (tmp_path / "notes.txt").write_text(make_text(200, seed=1), encoding="utf-8")
    seen = []
    result = charnn.train(str(tmp_path / "notes.txt"), out=str(tmp_path / "runs"), hidden=32, embed=8,
                          batch_size=4, seq_len=16, max_steps=6, eval_every=3, device="cpu",
                          on_event=lambda kind, info: seen.append(kind))
    assert isinstance(result, charnn.TrainResult) and result.steps == 6 and result.stopped == "max_steps"
    assert (result.run_dir / "best.pt").is_file() and (result.run_dir / "metrics.jsonl").is_file()
    assert "eval" in seen or any("eval" in k for k in seen), seen
    assert len(charnn.load(result.run_dir).generate("the", length=10, seed=0)) == 10
    with pytest.raises(ConfigError, match="unknown flags: hiden"):
        charnn.train(str(tmp_path / "notes.txt"), hiden=3)


def test_the_readme_example_runs_as_written(tmp_path):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Python API and server", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    (tmp_path / "notes.txt").write_text(make_text(300, seed=2), encoding="utf-8")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=subprocess_env(), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("\n") >= 2 and "bits/char" in r.stdout, r.stdout


def test_the_readme_seq2seq_example_runs_as_written(tmp_path):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Python API and server", 1)[1].split("\n## ", 1)[0]
    code = re.findall(r"```python\n(.*?)```", section, re.S)[1]
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=subprocess_env(), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    outputs, exact = r.stdout.splitlines()
    assert outputs.startswith("[") and 0.0 <= float(exact) <= 1.0, r.stdout


def test_a_subword_model_heals_the_prompt_as_charnn_sample_does(tmp_path):
    (tmp_path / "notes.txt").write_text(make_text(400, seed=3), encoding="utf-8")
    run = charnn.train(str(tmp_path / "notes.txt"), out=str(tmp_path / "runs"), tokenizer="bpe", vocab_size=300,
                       hidden=32, embed=8, batch_size=4, seq_len=16, max_steps=20, eval_every=20, device="cpu")
    model = charnn.load(run.run_dir, device="cpu")
    for prompt in ("the ca", "the cat sat on", "b"):  # cut mid-word: the last piece is taken back and completed
        cfg = SampleConfig(length=120, prime=prompt)
        sampled = "".join(Sampler(model.net, model.tokenizer, cfg, model.device, 5))
        got = model.generate(prompt, length=120, seed=5)
        assert len(got) == 120 and sampled == prompt + got
        for top_k, top_p in ((1, None), (3, None), (None, 0.5)):  # healing masks before the filters, as sample
            cfg = SampleConfig(length=60, prime=prompt, top_k=top_k, top_p=top_p)
            sampled = "".join(Sampler(model.net, model.tokenizer, cfg, model.device, 5))
            assert sampled == prompt + model.generate(prompt, length=60, top_k=top_k, top_p=top_p, seed=5)


def test_a_wrongly_typed_n_is_a_param_error(model):
    with pytest.raises(charnn.ParamError, match="n"):
        model.generate("the", length=5, n="2")


def test_calls_from_several_threads_and_abandoned_streams_do_not_mix(model):
    import threading

    want = {i: model.generate("the", length=150, seed=i) for i in range(4)}
    stream = model.stream("a dog", length=500, seed=9)
    next(stream)
    stream.close()  # abandoned half-way: its rows leave, its batcher is reused
    got = {}
    threads = [threading.Thread(target=lambda i=i: got.__setitem__(i, model.generate("the", length=150, seed=i)))
               for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == want and model.generate("the", length=150, seed=0) == want[0]


def test_batchers_kept_between_calls_are_few_whatever_the_calls(trained_run):
    """Each generate(n=k) and each concurrent caller made a batcher, all kept until the Model went: memory grew
    with every new n (20 values of n: 0.3 -> 2 GB on a 49 MB model)."""
    import threading

    from charnn.api.pool import IDLE_MOST, IDLE_PER_SIZE
    m = charnn.load(str(trained_run.run_dir), device="cpu")
    for n in range(1, 12):
        m.generate("the", 3, n=n, seed=1)
    threads = [threading.Thread(target=m.generate, args=("the", 20), kwargs={"n": 2, "seed": 3}) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    kept = [len(v) for v in m._pool.idle.values()]
    assert sum(kept) <= IDLE_MOST and max(kept) <= IDLE_PER_SIZE
    assert m.generate("the", 20, n=2, seed=3) == m.generate("the", 20, n=2, seed=3)


def test_an_interrupt_saves_last_pt_and_resume_continues_it(tmp_path):
    """A notebook's interrupt (SIGINT) during charnn.train: last.pt saved after the step, as the command does
    (the KeyboardInterrupt used to leave nothing since the last save), then KeyboardInterrupt; resume=True goes on."""
    import os
    import signal

    from charnn.checkpoint import load_checkpoint
    text = tmp_path / "t.txt"
    text.write_text(make_text(30))
    flags = dict(out=str(tmp_path), name="i", max_steps=30, batch_size=2, seq_len=8, threads=1, precision="fp32",
                 device="cpu", eval_every=100, save_every_secs=0, hidden=16, log_every=1)
    sent = []

    def on_event(kind, info):
        if kind == "step" and info["step"] >= 5 and not sent:
            sent.append(info["step"])
            os.kill(os.getpid(), signal.SIGINT)
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt, match="stopped at step"):
        charnn.train(str(text), on_event=on_event, **flags)
    assert signal.getsignal(signal.SIGINT) is before  # put back
    assert load_checkpoint(tmp_path / "i" / "last.pt")["step"] in (sent[0], sent[0] + 1)
    assert charnn.train(str(text), resume=True, **flags).steps == 30


def test_a_callback_that_raises_on_saved_leaves_best_and_last_written(tmp_path):
    """The "saved" events come after both files of an evaluation are written: a callback raising at the first
    left best.pt without last.pt (a fresh run that could not be resumed)."""
    text = tmp_path / "t.txt"
    text.write_text(make_text(30))

    def on_event(kind, info):
        if kind == "saved":
            raise RuntimeError("my callback broke")
    with pytest.raises(RuntimeError, match="my callback broke"):
        charnn.train(str(text), on_event=on_event, out=str(tmp_path), name="s", max_steps=4, eval_every=2,
                     batch_size=2, seq_len=8, threads=1, precision="fp32", device="cpu", hidden=16)
    assert (tmp_path / "s" / "best.pt").is_file() and (tmp_path / "s" / "last.pt").is_file()
    assert charnn.train(str(text), resume=True, out=str(tmp_path), name="s", max_steps=4, eval_every=2,
                        batch_size=2, seq_len=8, threads=1, precision="fp32", device="cpu", hidden=16).steps == 4


def test_generate_follows_the_weights_as_they_are_now(trained_run):
    """A kept batcher holds the weights laid out when it was made: after `net.load_state_dict` (or a fine-tuning
    step in place) generate(n=1) went on with the old weights while n=2 and score used the new ones."""
    import torch
    m = charnn.load(str(trained_run.run_dir), device="cpu")
    before = m.generate("the ", length=40, seed=1)
    with torch.no_grad():
        for p in m.net.parameters():
            p.mul_(0.5)
    fresh = charnn.load(str(trained_run.run_dir), device="cpu")
    fresh.net.load_state_dict(m.net.state_dict())
    after = m.generate("the ", length=40, seed=1)
    assert after == fresh.generate("the ", length=40, seed=1) != before
    assert m.generate("the ", length=40, seed=1, n=2)[0] == after


def test_train_leaves_the_callers_random_state_as_it_was(tmp_path):
    """A seeded run seeds torch's generator; charnn.train left it so, and a notebook's later draws changed just
    because a model was trained."""
    import torch
    text = tmp_path / "t.txt"
    text.write_text(make_text(20))
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    charnn.train(str(text), out=str(tmp_path), max_steps=2, hidden=16, batch_size=2, seq_len=8, device="cpu",
                 threads=1)
    assert torch.equal(torch.rand(3), expected)


def test_a_path_and_a_torch_device_are_taken_where_a_string_is(trained_run, tmp_path):
    """charnn.train(out=Path(...)) and device=torch.device("cpu") were ParamErrors (`out` takes a string), and
    charnn.load(device=torch.device("cpu")) an unknown device; the corpus and load's path took a Path already."""
    from pathlib import Path

    import torch
    text = tmp_path / "t.txt"
    text.write_text(make_text(20))
    run = charnn.train(text, out=tmp_path / "runs", max_steps=1, hidden=16, batch_size=2, seq_len=8,
                       device=torch.device("cpu"), threads=1)
    assert run.run_dir == tmp_path / "runs" / "t" and (run.run_dir / "last.pt").is_file()
    assert charnn.load(Path(trained_run.run_dir), device=torch.device("cpu")).device.type == "cpu"
    with pytest.raises(ParamError, match="CUDA_VISIBLE_DEVICES=1") as e:
        charnn.load(trained_run.run_dir, device=torch.device("cuda", 1))
    assert e.value.param == "device"


def test_values_in_errors_are_spelled_as_python_wrote_them(model, tmp_path):
    """The checks the API shares with the server showed values in JSON's spelling: generate(length=True) said
    "got true", charnn.train(hidden="64") 'got "64"'; the server's clients keep JSON's."""
    for kwargs, says in ((dict(length=True), "got True"), (dict(seed=True), "got True"), (dict(n=None), "got None"),
                         (dict(top_k="3"), "got '3'")):
        with pytest.raises(ParamError, match=re.escape(says)):
            model.generate("the", **kwargs)
    with pytest.raises(ParamError, match=re.escape("got '64'")):
        charnn.train(str(tmp_path / "t.txt"), hidden="64")
    with pytest.raises(CharnnError, match="label_by") as e:  # (it said: train one with --label-by)
        model.classify("the cat")
    assert "--" not in str(e.value)


def test_train_takes_the_commands_quiet_and_preview_every(tmp_path):
    """charnn.train(quiet=True) and (preview_every=2) were "unknown flags" though the README lists every flag of
    `charnn train`; quiet is what the library is anyway, and a preview is a "preview" event."""
    text = tmp_path / "t.txt"
    text.write_text(make_text(40))
    seen = []
    charnn.train(str(text), out=str(tmp_path), max_steps=4, hidden=16, batch_size=2, seq_len=8, device="cpu",
                 threads=1, quiet=True, preview_every=2, on_event=lambda k, i: seen.append((k, i)))
    previews = [i for k, i in seen if k == "preview"]
    assert [p["step"] for p in previews] == [2, 4] and all(isinstance(p["text"], str) and p["text"] for p in previews)
    for kwargs, param in ((dict(quiet="yes"), "quiet"), (dict(preview_every=-1), "preview_every")):
        with pytest.raises(ParamError) as e:
            charnn.train(str(text), out=str(tmp_path), max_steps=1, **kwargs)
        assert e.value.param == param


def test_a_model_pickles_and_deep_copies(trained_run):
    """pickle.dumps(model) was "cannot pickle '_thread.lock'" (and after a generate, a local function or a ctypes
    pointer): no multiprocessing, joblib or caching of a loaded model."""
    import copy
    import pickle
    m = charnn.load(str(trained_run.run_dir), device="cpu")
    text = m.generate("the ", length=30, seed=2)
    for other in (pickle.loads(pickle.dumps(m)), copy.deepcopy(m)):
        assert other.net is not m.net and other.generate("the ", length=30, seed=2) == text
        assert other.score("the cat").nats_per_char == m.score("the cat").nats_per_char


def test_a_callback_stops_training_by_raising_stop_training(tmp_path):
    """A callback had no clean way to stop a run (returning False was ignored; its own exception left no run
    folder; KeyboardInterrupt saved nothing): charnn.StopTraining ends it as a limit does, evaluated and saved."""
    from charnn.checkpoint import load_checkpoint
    text = tmp_path / "t.txt"
    text.write_text(make_text(40))
    kinds = []

    def enough(kind, info):
        kinds.append(kind)
        if kind == "step" and info["step"] == 3:
            raise charnn.StopTraining

    run = charnn.train(str(text), out=str(tmp_path), max_steps=50, hidden=16, batch_size=2, seq_len=8, device="cpu",
                       threads=1, on_event=enough)
    assert run.stopped == "callback" and run.steps == 3 and kinds[-1] == "done"
    assert load_checkpoint(run.run_dir / "last.pt")["step"] == 3 and (run.run_dir / "best.pt").is_file()
    assert math.isfinite(run.best_val_loss)


def test_a_run_stopped_before_its_first_step_leaves_an_older_run_of_its_name_as_it_was(tmp_path):
    """StopTraining at "start" (or --max-time too short for a step) saved an untrained model as best.pt and moved
    the trained run of that name into previous/, where the next such accident replaced it. Every event's info is
    JSON (the "done" event's run_dir was a Path, and a callback that logged json.dumps(info) failed the run)."""
    text = tmp_path / "t.txt"
    text.write_text(make_text(40))
    flags = dict(out=str(tmp_path), name="keep", max_steps=6, hidden=16, batch_size=2, seq_len=8, device="cpu",
                 threads=1)
    first = charnn.train(str(text), on_event=lambda kind, info: json.dumps(info), **flags)
    run = first.run_dir
    before = {f.name: f.read_bytes() for f in run.iterdir()}

    def stop_at_once(kind, info):
        json.dumps(info)
        if kind == "start":
            raise charnn.StopTraining

    again = charnn.train(str(text), on_event=stop_at_once, **flags)
    assert (again.stopped, again.steps, again.saved) == ("callback", 0, False) and first.saved
    assert {f.name: f.read_bytes() for f in run.iterdir()} == before  # (no previous/ either)
    fresh = charnn.train(str(text), on_event=stop_at_once, **{**flags, "name": "new"})
    assert fresh.saved and (fresh.run_dir / "best.pt").is_file()  # (no older run: the untrained model, as before)


def test_a_model_loaded_under_inference_mode_generates(trained_run):
    """Its weights keep no change counter: generate raised "Inference tensors do not track version counter"."""
    import torch
    with torch.inference_mode():
        m = charnn.load(str(trained_run.run_dir), device="cpu")
    assert m.generate("the ", length=20, seed=1) == charnn.load(str(trained_run.run_dir)).generate("the ", 20, seed=1)


def test_rows_that_cannot_fit_are_a_param_error_at_the_call(model):
    """generate(n=10**12) was a bare MemoryError (the list of texts came before the rows' check), and stream's
    came at its first next()."""
    for call in (model.generate, model.stream):
        with pytest.raises(ParamError, match="do not fit in memory") as e:
            call("the", length=1, n=10 ** 12)
        assert e.value.param == "n"


def test_settings_errors_name_the_keywords_not_the_flags(model, tmp_path):
    """The checks the API shares with the command line named its flags (`--dynamic-lr`, `--max-time`) and left
    `param` None; the API names its own keywords."""
    for kwargs, param in ((dict(lr=-1), "lr"), (dict(decay=2), "decay"), (dict(segment=0), "segment")):
        with pytest.raises(ParamError) as e:
            model.adapt("the cat", **kwargs)
        assert e.value.param == param and f"`{param}`" in str(e.value) and "--" not in str(e.value)
    text = tmp_path / "t.txt"
    text.write_text(make_text(5))
    for kwargs, param in ((dict(max_time="soon"), "max_time"), (dict(hidden="64"), "hidden"),
                          (dict(log_every=0), "log_every"), (dict(batch_size=0), "batch_size")):
        with pytest.raises(ParamError) as e:
            charnn.train(str(text), out=str(tmp_path), max_steps=1, **kwargs)
        assert e.value.param == param and f"`{param}`" in str(e.value) and "--" not in str(e.value), str(e.value)
    # errors that are not a setting's check, from the code the command line shares, in the keywords' words too
    with pytest.raises(ParamError, match="unknown device 'gpu'") as e:
        charnn.load(model.path, device="gpu")
    assert e.value.param == "device" and "--" not in str(e.value)
    for kwargs, says in ((dict(out=str(text)), "choose another out"), (dict(batch_size=10 ** 6), "lower batch_size")):
        with pytest.raises(CharnnError, match=says) as e:  # (a run's own errors: --out, --batch-size)
            charnn.train(str(text), max_steps=1, **{"out": str(tmp_path), **kwargs})
        assert "--" not in str(e.value), str(e.value)
    with pytest.raises(CharnnError, match="for_label does not apply") as e:
        model.for_label("x")
    assert "--" not in str(e.value)
    odd = tmp_path / "my--runs" / "--x"  # (a path with dashes is not a flag: it was rewritten to 'myruns/x')
    with pytest.raises(CharnnError) as e:
        charnn.load(odd)
    assert str(odd) in str(e.value)


def test_an_empty_corpus_argument_is_refused_and_a_path_is_a_path(tmp_path):
    """Was: charnn.train("") (and `charnn train "$UNSET"`) trained on the current folder, checkpoints and all;
    charnn.train([]) on the built-in corpus; charnn.train(Path(...)) a TypeError."""
    from pathlib import Path
    from charnn.errors import CharnnError
    for corpus, says in (("", "empty string"), ([], "list of corpus files is empty"), ([""], "empty string"),
                         (5, "got int")):
        with pytest.raises(CharnnError, match=says):
            charnn.train(corpus, out=str(tmp_path), max_steps=1)
    assert not list(tmp_path.iterdir())
    text = tmp_path / "t.txt"
    text.write_text(make_text(20))
    run = charnn.train(Path(text), out=str(tmp_path / "runs"), max_steps=2, hidden=16, batch_size=2, seq_len=8,
                       device="cpu", threads=1)
    assert run.steps == 2 and run.run_dir.name == "t"
    r = subprocess.run([sys.executable, "-m", "charnn", "train", "", "--out", str(tmp_path / "cli")],
                       cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "empty string" in r.stderr and not (tmp_path / "cli").exists()


def test_wrong_arguments_are_param_errors_naming_them(model):
    """Were: an RNN's RuntimeError, numpy's `need at least one array to stack`, `'NoneType' object has no
    attribute 'encode'`, a TypeError comparing a float with a str; top_k=0 gave one alternative without a word."""
    calls = [("gradient_reach", ("the cat sat on the mat",), dict(max_k=-1), "max_k"),
             ("gradient_reach", ("the cat sat",), dict(positions=0), "positions"),
             ("score", (None,), {}, "text"), ("score", (5,), {}, "text"), ("token_logprobs", (None,), {}, "text"),
             ("token_logprobs", ("the",), dict(top=21), "top"), ("adapt", ("the cat",), dict(lr="x"), "lr"),
             ("surprisal", ("the",), dict(top_k=0), "top_k"), ("activations", (b"the",), {}, "text")]
    for method, args, kwargs, param in calls:
        with pytest.raises(ParamError) as e:
            getattr(model, method)(*args, **kwargs)
        assert e.value.param == param, (method, e.value)
    with pytest.raises(ParamError, match="int8"):
        charnn.load(model.path, int8="yes")
    with pytest.raises(ParamError, match="on_event"):
        charnn.train("anything.txt", on_event=5)


def test_stream_checks_its_settings_at_the_call(model):
    """stream() was a generator: a bad setting raised only at the first next(), far from the call that made it."""
    with pytest.raises(ParamError, match="length"):
        model.stream("the", length=-1)
    pieces = model.stream("the", length=12, seed=3)
    assert "".join(pieces) == model.generate("the", length=12, seed=3)


def test_calls_a_model_cannot_answer_are_charnns_errors(model, monkeypatch):
    """A helper's hunt: an n past memory was torch's RuntimeError; `dynamic="no"` scored dynamically; an empty text
    scored NaN (and adapt did nothing); another kind's call was Python's AttributeError (hasattr still works)."""
    from charnn.errors import WrongKind
    from charnn.generation import batcher

    def no_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] . DefaultCPUAllocator: can't allocate memory: you "
                           "tried to allocate 128000000000 bytes")
    with monkeypatch.context() as m:
        m.setattr(batcher, "Batcher", no_memory)
        m.setattr("charnn.api.pool.Batcher", no_memory)
        with pytest.raises(ParamError, match="`n`=1,000,000 rows do not fit in memory") as e:
            model.generate("the", length=3, n=10 ** 6)
    assert e.value.param == "n"
    with pytest.raises(ParamError, match="`dynamic` must be True or False"):
        model.score("the cat", dynamic="no")
    import numpy as np
    assert model.score("the cat", dynamic=np.bool_(False)).nats == model.score("the cat").nats  # (numpy's bool)
    from_numpy = model.generate("the", length=np.int64(20), n=np.int32(2), temperature=np.float32(0.5),
                                top_k=np.int16(5), seed=np.uint8(3))  # (numbers from an array were refused)
    assert from_numpy == model.generate("the", length=20, n=2, temperature=float(np.float32(0.5)), top_k=5, seed=3)
    with pytest.raises(ParamError, match="`length` must be an integer"):
        model.generate("the", length=np.bool_(True))
    for call in (model.score, model.adapt):
        with pytest.raises(ParamError, match="`text` is empty"):
            call("")
    with pytest.raises(WrongKind, match="is a language model.*transduce\\(\\) is a sequence-to-sequence model's"):
        model.transduce("abc")
    assert isinstance(WrongKind("x"), CharnnError) and not hasattr(model, "transduce") and hasattr(model, "generate")


def test_train_takes_numpy_numbers_as_its_flags(tmp_path):
    """Settings from an array (a sweep over np.linspace) were refused, or would not go into config.json."""
    import numpy as np

    text = tmp_path / "t.txt"
    text.write_text(make_text(40), encoding="utf-8")
    r = charnn.train(str(text), out=str(tmp_path), name="np", max_steps=np.int64(2), hidden=np.int32(16),
                     layers=np.int64(1), lr=np.float32(0.01), batch_size=np.int64(2), seq_len=np.int64(16),
                     threads=1)
    config = json.loads((r.run_dir / "config.json").read_text())
    assert r.steps == 2 and config["model"]["hidden"] == 16 and config["train"]["max_steps"] == 2


def test_token_logprobs_first_calls_from_two_threads_both_answer(trained_run, monkeypatch):
    """Its tables were made outside any lock, one before the other: a second thread's first call could index the
    one not made yet (TypeError: 'NoneType' object is not subscriptable; seen with a slowed tokenizer)."""
    import threading
    import time

    fresh = charnn.load(trained_run.run_dir, device="cpu")
    real = type(fresh.tokenizer).token_chars

    def slow(self, ids):
        time.sleep(0.002)
        return real(self, ids)
    monkeypatch.setattr(type(fresh.tokenizer), "token_chars", slow)
    answers, errors = [], []

    def call():
        try:
            answers.append(fresh.token_logprobs("the cat"))
        except Exception as e:  # noqa: BLE001 (what the race raised)
            errors.append(e)
    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(answers) == 3 and answers[0] == answers[1] == answers[2]


def test_flags_inside_a_windows_path_are_not_reworded():
    """The API rewords the command line's flags in a shared message into its keywords (--int8 -> int8), never a
    part of a path that looks like one, '/' or '\\' before it."""
    from charnn.api.params import keyword_names

    with pytest.raises(CharnnError) as e:
        with keyword_names():
            raise CharnnError("checkpoint 'C:\\runs\\--x\\best.pt' and '/tmp/--y' do not exist; sample without --int8")
    assert str(e.value) == "checkpoint 'C:\\runs\\--x\\best.pt' and '/tmp/--y' do not exist; sample without int8"


def test_a_training_that_fails_to_start_leaves_torchs_thread_count_as_it_was(tmp_path):
    """charnn.train(threads=1) whose setup failed (a resume with other flags, an on_event that raised) left torch
    at 1 thread in the caller's process; only a finished fit put it back."""
    import torch

    import charnn
    from charnn.errors import CharnnError

    (tmp_path / "t.txt").write_text("the cat sat on the mat\n" * 200, encoding="utf-8")
    small = dict(out=str(tmp_path), name="r", hidden=16, layers=1, batch_size=4, seq_len=16, device="cpu")
    charnn.train(str(tmp_path / "t.txt"), max_steps=2, **small)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(CharnnError):
            charnn.train(str(tmp_path / "t.txt"), resume=True, max_steps=1, threads=1, **small)  # (trained 2)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_load_leaves_the_callers_rng_alone_and_refuses_an_empty_path(trained_run):
    """charnn.load drew the fresh model's weights from torch's global RNG (a seeded notebook's next draws moved);
    charnn.load("") was the current folder ("run folder '' has no best.pt or last.pt", or a run there)."""
    import torch

    torch.manual_seed(0)
    want = torch.rand(3)
    torch.manual_seed(0)
    charnn.load(str(trained_run.run_dir), device="cpu")
    assert torch.equal(torch.rand(3), want)
    for empty in ("", "  "):
        with pytest.raises(CharnnError, match="empty string"):
            charnn.load(empty)
    with pytest.raises(CharnnError, match="holds a line break: text, not a path"):  # (the text itself, given)
        charnn.train("the cat sat on the mat\nthe dog sat on the log\n", max_steps=1)


def test_rows_that_would_not_fit_in_memory_are_refused_before_they_are_asked_for(trained_run, monkeypatch):
    """generate(n=10**7) was killed by Linux (a notebook's kernel died): the memory was granted, then touched. Now n
    rows that need more than the memory available are one ParamError, before any is made."""
    from charnn.api import pool

    m = charnn.load(str(trained_run.run_dir), device="cpu")
    monkeypatch.setattr(pool, "available_memory", lambda: 100 * pool.row_bytes(m))
    assert len(m.generate("the ", length=5, n=100, seed=1)) == 100
    for call in (m.generate, m.stream):
        with pytest.raises(ParamError, match=r"`n`=101 rows do not fit in memory: they need about .* and .* is "
                                             r"free; ask for fewer"):
            call("the ", length=5, n=101)
    monkeypatch.setattr(pool, "available_memory", lambda: None)  # (where it cannot be read: as before)
    assert len(m.generate("the ", length=5, n=101, seed=1)) == 101
    monkeypatch.undo()
    free = pool.available_memory()
    if free is not None:  # (this machine's real memory, just past it)
        with pytest.raises(ParamError, match="ask for fewer"):
            m.generate("the ", length=1, n=free // pool.row_bytes(m) + 1)


def test_available_memory_is_a_containers_limit_where_that_is_less(monkeypatch, tmp_path):
    """MemAvailable is the host's: in a container with a memory limit (cgroup v2 or v1) the limit is what is left."""
    from charnn import device

    host = device.available_memory()
    limit, usage = tmp_path / "max", tmp_path / "current"
    usage.write_text("1000000\n")
    for most, want in (("3000000\n", 2000000), ("max\n", host), (f"{2 ** 63 - 4096}\n", host)):
        limit.write_text(most)
        monkeypatch.setattr(device, "CGROUP_MEMORY", ((str(tmp_path / "none"), str(usage)), (str(limit), str(usage))))
        got = device.available_memory()
        assert got == want if want != host else (host is None or abs(got - host) < 2 ** 28), (most, got)
