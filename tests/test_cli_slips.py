"""The command line's rough edges: stdin for `eval -`, the newest run as every reader's default, `--temp 0` as
greedy (as in the API), and help texts that say what the flags do and what they default to."""

import json
import shutil

import pytest
import typer
from conftest import one_line_error, train_tiny_pairs
from typer.testing import CliRunner

import charnn
from charnn.cli import app
from charnn.errors import CharnnError, ConfigError

runner = CliRunner()


def invoke(*args, cwd=None, input=None):
    if cwd is None:
        return runner.invoke(app, [str(a) for a in args], input=input)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        return runner.invoke(app, [str(a) for a in args], input=input)


def option(command: str, flag: str):
    """The click parameter behind `charnn COMMAND FLAG` (its help and shown default, without terminal wrapping)."""
    cmd = typer.main.get_command(app).commands[command]
    return next(p for p in cmd.params if flag in p.opts)


@pytest.fixture
def newest(tmp_path, trained_run):
    """A folder whose ./checkpoints holds the tiny run: commands given no checkpoint take it."""
    shutil.copytree(trained_run.run_dir, tmp_path / "checkpoints" / "tiny")
    return tmp_path


# -- eval reads stdin ---------------------------------------------------------------------------------------------
def test_eval_dash_scores_stdin_like_the_file(trained_run, corpus_file, newest):
    text = corpus_file.read_text(encoding="utf-8")
    by_file = json.loads(invoke("eval", trained_run.run_dir, corpus_file, "--json").stdout)
    r = invoke("eval", trained_run.run_dir, "-", "--json", input=text)
    assert r.exit_code == 0, r.stderr
    by_stdin = json.loads(r.stdout)
    assert by_stdin["nats_per_char"] == pytest.approx(by_file["nats_per_char"])
    assert by_stdin["chars"] == by_file["chars"] == len(text)
    assert [f["path"] for f in by_stdin["files"]] == ["-"]
    r = invoke("eval", "-", "--json", input=text, cwd=newest)  # and from the newest run
    assert r.exit_code == 0 and json.loads(r.stdout)["nats_per_char"] == pytest.approx(by_file["nats_per_char"])


def test_eval_dash_with_nothing_on_stdin_is_one_line(trained_run):
    one_line_error(invoke("eval", trained_run.run_dir, "-", input=""), 1, "stdin", "empty")


# -- the newest run is every reader's default -----------------------------------------------------------------------
def test_plot_draws_the_newest_run_by_default(pairs_root):
    pytest.importorskip("matplotlib")
    r = invoke("plot", "-o", "curves.png", cwd=pairs_root)  # a run the command line trained: it has metrics
    assert r.exit_code == 0, r.stderr
    assert (pairs_root / "curves.png").stat().st_size > 0


def test_novelty_checks_against_the_newest_run_by_default(trained_run, newest):
    sample = "the cat sat on a mat and the dog ran\n"
    given = invoke("novelty", trained_run.run_dir, "--json", input=sample)
    assert given.exit_code == 0, given.stderr
    for args in ([], ["-"]):
        r = invoke("novelty", *args, "--json", input=sample, cwd=newest)
        assert r.exit_code == 0, r.stderr
        assert json.loads(r.stdout)["longest"] == json.loads(given.stdout)["longest"]
    one_line_error(invoke("novelty", trained_run.run_dir, "a.txt", "b.txt"), 2, "one SAMPLE")


@pytest.fixture(scope="module")
def pairs_root(tmp_path_factory):
    """A folder whose ./checkpoints holds a tiny sequence-to-sequence run (it learns nothing; greedy is greedy)."""
    root = tmp_path_factory.mktemp("slips-s2s")
    train_tiny_pairs(root, root / "checkpoints")
    return root


def test_transduce_takes_the_newest_run_by_default(pairs_root):
    lines = "abc\nde\n"
    given = invoke("transduce", pairs_root / "checkpoints" / "rev", "-q", input=lines)
    assert given.exit_code == 0, given.stderr
    r = invoke("transduce", "-q", input=lines, cwd=pairs_root)
    assert r.exit_code == 0, r.stderr
    assert r.stdout == given.stdout and len(r.stdout.splitlines()) == 2
    (pairs_root / "words.txt").write_text(lines, encoding="utf-8")  # FILE without CHECKPOINT: still the newest run
    assert invoke("transduce", "words.txt", "-q", cwd=pairs_root).stdout == given.stdout


def test_a_bare_command_takes_the_newest_run_it_can_use(pairs_root, corpus_file, tmp_path):
    """sample, novelty and serve's models write text, transduce's reads pairs: a bare command passes over newer
    runs of another kind (a bare `charnn sample` after a --pairs run took it and refused it)."""
    import os
    runs = tmp_path / "checkpoints"
    shutil.copytree(pairs_root / "checkpoints" / "rev", runs / "rev")
    r = invoke("train", corpus_file, "--out", runs, "--name", "lm", "--hidden", "16", "--layers", "1",
               "--max-steps", "4", "--eval-every", "2", "--device", "cpu", "--threads", "1", "-q")
    assert r.exit_code == 0, r.stderr

    def newest(name):
        for f in (runs / name).iterdir():
            os.utime(f, (f.stat().st_mtime + 100, f.stat().st_mtime + 100))
    newest("rev")
    r = invoke("sample", "--length", "20", "--seed", "1", cwd=tmp_path)
    assert r.exit_code == 0, r.stderr
    assert "sampling checkpoints/lm/" in r.stderr and len(r.stdout) >= 20
    assert invoke("novelty", "--json", input="the cat\n", cwd=tmp_path).exit_code == 0
    newest("lm"), newest("lm")  # now the language model is the newer: transduce still takes the pairs run
    r = invoke("transduce", "-q", input="abc\n", cwd=tmp_path)
    assert r.exit_code == 0, r.stderr
    assert r.stdout == invoke("transduce", runs / "rev", "-q", input="abc\n").stdout
    shutil.rmtree(runs / "lm")  # no run of the kind: the newest, and its command's own error
    one_line_error(invoke("sample", cwd=tmp_path), 1, "transduce")


# -- --temp 0 is greedy, as in the API -------------------------------------------------------------------------------
def test_sample_temp_zero_is_greedy(trained_run):
    greedy = invoke("sample", trained_run.run_dir, "--greedy", "--length", "80", "--seed", "1", "-q")
    zero = invoke("sample", trained_run.run_dir, "--temp", "0", "--length", "80", "--seed", "2", "-q")
    assert zero.exit_code == 0, zero.stderr
    assert zero.stdout == greedy.stdout
    one_line_error(invoke("sample", trained_run.run_dir, "--temp", "-1"), 2, "--temp", ">= 0")
    assert "--greedy" in option("sample", "--temp").help


def test_transduce_temp_zero_is_greedy_search(pairs_root):
    run, lines = pairs_root / "checkpoints" / "rev", "abc\nde\ncab\n"
    search = invoke("transduce", run, "-q", input=lines)
    zero = invoke("transduce", run, "--temp", "0", "--seed", "3", "-q", input=lines)
    assert zero.exit_code == 0, zero.stderr
    assert zero.stdout == search.stdout


# -- help texts -----------------------------------------------------------------------------------------------------
def test_help_slips():
    contrast = option("train", "--label-contrast").help
    assert "labels'" not in contrast and "under other labels" in contrast
    label = option("eval", "--label").help
    assert "score" in label and "write" not in label
    assert "write" in option("sample", "--label").help
    for flag in ("--top-k", "--top-p", "--greedy"):  # a bpe model draws subword pieces, not characters
        assert "token" in option("sample", flag).help, flag


@pytest.mark.parametrize("flag, shown", [("--batch-size", "8 on the CPU"), ("--vocab-size", "1024"),
                                         ("--threads", "measured")])
def test_train_flags_without_a_fixed_default_still_show_one(flag, shown):
    p = option("train", flag)
    assert isinstance(p.show_default, str) and shown in p.show_default, (flag, p.show_default)


# -- flags that were accepted and did nothing -----------------------------------------------------------------------
def test_flags_without_effect_are_one_line(pairs_root, tmp_path, corpus_file):
    run = pairs_root / "checkpoints" / "rev"
    one_line_error(invoke("transduce", run, "--length-penalty", "0.6", input="abc\n"), 2, "--length-penalty", "--beam")
    assert invoke("transduce", run, "--length-penalty", "0.6", "--beam", "2", "-q", input="abc\n").exit_code == 0
    one_line_error(invoke("transduce", run, "--length-penalty", "0.6", "--temp", "0.8", input="abc\n"), 2,
                   "sampling (--temp/--top-k/--top-p) does not use it")  # (not "add --beam": that is refused too)
    one_line_error(invoke("train", pairs_root / "rev.tsv", "--pairs", "--seq-len", "64", "--max-steps", "2",
                          "--out", tmp_path), 2, "--seq-len", "--pairs")
    out = tmp_path / "runs"
    assert invoke("train", corpus_file, "--out", out, "--name", "r", "--max-steps", "3", "--hidden", "16", "--layers",
                  "1", "--threads", "1", "-q").exit_code == 0
    one_line_error(invoke("train", corpus_file, "--out", out, "--name", "r", "--resume", "--max-steps", "2"), 2,
                   "has trained 3 steps", "more than 3")  # it ended at once, silently
    one_line_error(invoke("train", corpus_file, "--out", out, "--name", "r", "--resume"), 2,
                   "has trained its --max-steps (3 steps)")
    assert invoke("train", corpus_file, "--out", out, "--name", "r", "--resume", "--max-steps", "4", "-q").exit_code == 0
    assert invoke("train", corpus_file, "--out", out, "--name", "e", "--epochs", "1", "--hidden", "16", "--layers", "1",
                  "--threads", "1", "--batch-size", "64", "-q").exit_code == 0
    one_line_error(invoke("train", corpus_file, "--out", out, "--name", "e", "--resume"), 2,
                   "has trained its --epochs (1 epoch)")
    half = ["--out", out, "--name", "h", "--epochs", "0.5", "--hidden", "16", "--layers", "1", "--threads", "1",
            "--batch-size", "4", "--seq-len", "32", "--eval-every", "1000", "-q"]
    assert invoke("train", corpus_file, *half).exit_code == 0
    one_line_error(invoke("train", corpus_file, "--out", out, "--name", "h", "--resume"), 2,  # (it trained 0 steps
                   "has trained its --epochs (0.5")  # and said "done": the check counted whole epochs only)
    timed = invoke("train", corpus_file, "--out", out, "--name", "t", "--max-time", "1", "--hidden", "16", "--layers",
                   "1", "--threads", "1")  # (in-process, the clock counts from pytest's start: spent before a step)
    assert timed.exit_code == 0 and "done (max_time) after 0 steps" in timed.stderr, timed.stderr
    assert "ran out before a training step" in timed.stderr  # (it saved an untrained model and said only "done")
    one_line_error(invoke("train", corpus_file, "--out", out, "--name", "t", "--resume"), 2,
                   "has used its --max-time (")  # (it trained 0 steps again)
    one_line_error(invoke("train", corpus_file, "--out", out, "--name", "r", "--resume", "--max-time", "1",
                          "--max-steps", "9"), 2, "has trained for", "--max-time counts from the run's start")


def test_training_flags_this_run_would_ignore_are_one_line(corpus_file, tmp_path):
    """They were accepted and ignored without a word: label flags without labels, --skip-bad-lines without lines
    to skip, --val-frac beside --val-file."""
    out = ["--out", tmp_path, "--max-steps", "1"]
    for flags, words in ((["--label-dropout", "0.2"], ("--label-dropout", "--label-by")),
                         (["--label-negatives", "3"], ("--label-negatives", "--label-by")),
                         (["--label-by", "line", "--label-negatives", "3"],
                          ("--label-negatives", "add `--label-contrast`")),
                         (["--skip-bad-lines"], ("--skip-bad-lines", "--pairs")),
                         (["--label-by", "file", "--skip-bad-lines"], ("--skip-bad-lines", "--label-by line")),
                         (["--val-file", corpus_file, "--val-frac", "0.2"], ("--val-frac", "--val-file", "drop one"))):
        one_line_error(invoke("train", corpus_file, *flags, *out), 2, *words)
    with pytest.raises(ConfigError, match="label_dropout"):  # charnn.train's words
        charnn.train(str(corpus_file), label_dropout=0.2, max_steps=1, out=str(tmp_path))


def test_the_default_warmup_fits_a_short_run(corpus_file, tmp_path):
    """--max-steps 20 with the default --warmup 50 warmed up all the way: the rate never reached --lr."""
    from charnn.training.run import train_configs
    assert train_configs({"max_steps": 20})[1].warmup == 5
    assert train_configs({"max_steps": 200})[1].warmup == 50 == train_configs({"max_time": "5m"})[1].warmup
    assert train_configs({"max_steps": 20, "warmup": 50})[1].warmup == 50  # (given, the default's value too: the
    assert train_configs({"max_steps": 20, "warmup": 30})[1].warmup == 30  # user's)
    assert train_configs({"max_steps": 20, "warmup": 50}, given={"max_steps"})[1].warmup == 5
    r = invoke("train", corpus_file, "--out", tmp_path, "--max-steps", "20", "--hidden", "16", "--layers", "1",
               "--threads", "1")
    assert r.exit_code == 0 and json.loads((tmp_path / "tiny" / "config.json").read_text())["train"]["warmup"] == 5


def test_a_small_corpus_trains_on_fewer_rows_than_the_default_batch(tmp_path):
    """The default batch was an error on small data ("fewer than one batch needs (32); lower --batch-size"), about
    a flag the user never gave: a 700-character text, 27 training pairs, 6 labelled lines."""
    small = ["--max-steps", "2", "--hidden", "16", "--layers", "1", "--threads", "1", "--out", tmp_path, "-q"]
    (tmp_path / "lm.txt").write_text("hello world, this is a small corpus. " * 20, encoding="utf-8")
    (tmp_path / "p.tsv").write_text("".join(f"w{i}\t{i}w\n" for i in range(30)), encoding="utf-8")
    (tmp_path / "l.tsv").write_text("".join(f"{'ab'[i % 2]}\tline {i}\n" for i in range(8)), encoding="utf-8")
    for corpus, flags, rows in (("lm.txt", [], 5), ("p.tsv", ["--pairs"], 27),
                                ("l.tsv", ["--label-by", "line", "--classifier", "--val-frac", "0.25"], 6),
                                ("l.tsv", ["--label-by", "line", "--val-frac", "0.25", "--name", "llm"], 6)):
        r = invoke("train", tmp_path / corpus, *flags, *small)
        assert r.exit_code == 0, (corpus, flags, r.stderr)
        name = "llm" if "llm" in flags else corpus.split(".")[0]
        assert json.loads((tmp_path / name / "config.json").read_text())["train"]["batch_size"] == rows, flags
    one_line_error(invoke("train", tmp_path / "lm.txt", "--batch-size", "8", *small), 1, "lower --batch-size")
    import torch

    from charnn.config import TrainConfig
    from charnn.tasks.base import Task  # under torchrun --batch-size is the whole batch: each process's share
    task = Task(None)  # of the rows (2 processes on that text were told to lower --batch-size again)
    task.train_ids = torch.zeros(700, dtype=torch.long)
    cpu = torch.device("cpu")
    assert [task.default_batch_size(cpu, TrainConfig(seq_len=128), world) for world in (1, 2)] == [5, 4]
    assert task.default_batch_size(cpu, TrainConfig(seq_len=16), 2) == 16
    with pytest.raises(CharnnError, match="fills 5 batch rows, fewer than the 8 processes"):  # (it named
        task.default_batch_size(cpu, TrainConfig(seq_len=128), 8)  # --batch-size, never given)


def test_adapt_reads_stdin_and_an_empty_prime_is_one_line_from_a_file_or_stdin(trained_run, tmp_path):
    run = trained_run.run_dir
    text = "the cat sat on the mat " * 10
    (tmp_path / "adapt.txt").write_text(text, encoding="utf-8")
    piped = invoke("sample", run, "--adapt", "-", "--length", "30", "--seed", "2", input=text)
    assert piped.exit_code == 0, piped.stderr  # '-' was read as a file named '-'
    assert "adapted to stdin: 230 characters" in piped.stderr
    assert piped.stdout == invoke("sample", run, "--adapt", tmp_path / "adapt.txt", "--length", "30", "--seed", "2",
                                  "-q").stdout
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    one_line_error(invoke("sample", run, "--prime-file", tmp_path / "empty.txt"), 1, "is empty")
    one_line_error(invoke("sample", run, "--prime-file", "-", input=""), 1, "on stdin (-) is empty")  # (it sampled)
    one_line_error(invoke("sample", run, "--prime-file", "-", "--adapt", "-", input=text), 2, "read once")


def test_a_text_flag_that_is_not_utf8_is_named_as_bytes(trained_run):
    # (a non-UTF-8 command line reaches Python as lone surrogates: they were named as characters the model lacks)
    for flag in ("--prime", "--stop", "--separator"):
        one_line_error(invoke("sample", trained_run.run_dir, flag, "the \udced cat", "--length", "5"), 2, flag,
                       "not UTF-8 text (byte 0xED)")


# -- paths and files the system refuses ---------------------------------------------------------------------------
LONG = "a" * 300  # one path part over the 255 bytes a file name may have


@pytest.mark.parametrize("args", [["info", LONG], ["sample", LONG], ["eval", "RUN", LONG], ["train", LONG],
                                  ["sample", "RUN", "--prime-file", LONG], ["plot", LONG],
                                  ["novelty", "RUN", LONG], ["show", "RUN", LONG]])
def test_a_path_the_system_refuses_is_one_line_naming_it(trained_run, args):
    """Path.exists() raises for a name over 255 bytes (ENAMETOOLONG): a traceback from a dozen commands."""
    r = invoke(*[str(trained_run.run_dir) if a == "RUN" else a for a in args])
    assert r.exit_code in (1, 2), r.stderr
    one_line_error(r, r.exit_code, "File name too long", "aaaa...aaaa")


def test_train_refuses_a_name_too_long_for_a_folder(corpus_file, tmp_path):
    r = invoke("train", corpus_file, "--max-steps", 1, "--out", tmp_path, "--name", LONG)
    one_line_error(r, 2, "--name", "longer than 200 bytes")


@pytest.mark.parametrize("output", ["", ".", "/", "..", "...", "FOLDER"])
def test_plot_output_that_names_no_file_is_a_usage_error(trained_run, output, tmp_path):
    """'' and '.' were a ValueError traceback (an empty name); '..' wrote a hidden '.png'; a folder 't' wrote
    './t.png'."""
    r = invoke("plot", trained_run.run_dir, "-o", str(tmp_path) if output == "FOLDER" else output)
    one_line_error(r, 2, "names no file")


def test_plot_names_what_it_writes(tmp_path):
    """A name without a suffix (or one matplotlib does not draw) gets .png; one that exists without a suffix is written
    as it is (it was /dev/full.png)."""
    pytest.importorskip("matplotlib")
    import json
    metrics = tmp_path / "run" / "metrics.jsonl"
    metrics.parent.mkdir()
    metrics.write_text("".join(json.dumps({"step": s, "train_loss": 3.0 / s, "elapsed": s, **({"val_loss": 3.1 / s}
                                           if s % 2 == 0 else {})}) + "\n" for s in range(1, 9)))
    r = invoke("plot", metrics, "-o", tmp_path / "x.xyz")  # a suffix matplotlib does not draw: a .png, said so
    assert r.exit_code == 0 and (tmp_path / "x.xyz.png").is_file() and str(tmp_path / "x.xyz.png") in r.stderr
    r = invoke("plot", metrics, "-o", tmp_path / "curves.svgz")  # any format matplotlib draws
    assert r.exit_code == 0 and (tmp_path / "curves.svgz").is_file(), r.stderr
    r = invoke("plot", metrics, "-o", tmp_path / "curves")
    assert r.exit_code == 0 and (tmp_path / "curves.png").read_bytes().startswith(b"\x89PNG"), r.stderr
    (tmp_path / "given").write_bytes(b"")
    r = invoke("plot", metrics, "-o", tmp_path / "given")
    assert r.exit_code == 0 and (tmp_path / "given").stat().st_size > 1000 and not (tmp_path / "given.png").exists()


def test_damaged_checkpoints_are_one_line(corpus_file, tmp_path):
    """A last.pt whose random state is not torch's (hand-edited) was a TypeError traceback on --resume; a checkpoint
    without its format version was called "newer than this charnn"."""
    import torch

    run = tmp_path / "runs" / "r"
    tiny = ["--layers", 1, "--hidden", 16, "--seq-len", 16, "--batch-size", 2, "--threads", 1, "--out", run.parent,
            "--name", "r", "-q"]
    assert invoke("train", corpus_file, "--max-steps", 2, *tiny).exit_code == 0
    data = torch.load(run / "last.pt", weights_only=False)
    data["rng"]["torch"] = torch.zeros(1)
    torch.save(data, run / "last.pt")
    before = (run / "best.pt").read_bytes()
    r = invoke("train", corpus_file, "--resume", "--max-steps", 4, *tiny)
    one_line_error(r, 1, "--resume: the checkpoint's random state is damaged")
    assert (run / "best.pt").read_bytes() == before
    del data["version"]
    torch.save(data, tmp_path / "nov.pt")
    one_line_error(invoke("info", tmp_path / "nov.pt"), 1, "has no checkpoint format version")
    # hand-edited fields that still load were tracebacks: a vocabulary without its characters, a step that is no
    # number (info), weights that do not fit the config (--init-from), a NaN in metrics.jsonl (info's curve)
    good = torch.load(run / "best.pt", weights_only=False)
    for name, edit in (("nochars", lambda d: d["tokenizer"].pop("chars")), ("step", lambda d: d.update(step="x")),
                       ("shape", lambda d: d["model"].update({"head.bias": torch.zeros(3)}))):
        bad = {**good, "tokenizer": dict(good["tokenizer"]), "model": dict(good["model"])}
        edit(bad)
        (tmp_path / name).mkdir()
        torch.save(bad, tmp_path / name / "best.pt")
    for args in (["sample", tmp_path / "nochars"], ["info", tmp_path / "nochars"], ["info", tmp_path / "step"]):
        one_line_error(invoke(*args), 1, "damaged")
    r = invoke("train", corpus_file, "--init-from", tmp_path / "shape", "--max-steps", 1, "--out", tmp_path, "-q")
    one_line_error(r, 1, "do not fit its own model config", "size mismatch for head.bias: the checkpoint's is [3], "
                   "the model's [")
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 3, "train_loss": NaN}\n')
    r = invoke("info", run)
    assert r.exit_code == 0 and "over steps" in r.stdout, r.stderr


def test_the_commands_said_after_training_are_quoted_for_the_shell():
    """"sample it with: charnn sample out dir/my run" (and a name starting with a dash: "No such option")."""
    from charnn.cli.train import _quote
    assert _quote("out dir/my run") == "'out dir/my run' " and _quote("-x/r") == "./-x/r " and _quote("") == ""


def test_a_run_moved_into_previous_by_a_failed_run_is_pointed_at(tmp_path):
    """A fresh run under an existing name moves the older run into previous/ at its first save; one that failed
    there (a full disk) left the folder without checkpoints, and sample and --resume said only "train into it
    first" and "start it afresh"."""
    run = tmp_path / "r"
    (run / "previous").mkdir(parents=True)
    (run / "previous" / "last.pt").write_bytes(b"x")
    one_line_error(invoke("sample", run), 1, "its previous/ holds the older run's last.pt", "previous")
    one_line_error(invoke("train", "--out", tmp_path, "--name", "r", "--resume"), 1,
                   "the run before it is in", "previous")


def test_a_pipe_given_as_a_checkpoint_is_one_line(tmp_path):
    """A FIFO with no writer hung `charnn sample`; <(cat best.pt) said "truncated or corrupt: Illegal seek"."""
    import os
    fifo = tmp_path / "ck.fifo"
    os.mkfifo(fifo)
    for command in ("sample", "info"):
        one_line_error(invoke(command, fifo), 1, "is a pipe or a device, not a file")


def test_no_home_folder_for_the_cache_is_one_line_and_what_only_caches_goes_on(corpus_file, trained_run, tmp_path,
                                                                              monkeypatch):
    """HOME unset under a uid with no passwd entry (a container's arbitrary uid), or CHARNN_CACHE='~nobody/x': a
    RuntimeError traceback from pathlib in train, sample and novelty."""
    import pathlib
    monkeypatch.setenv("CHARNN_CACHE", "~no_such_user_charnn/x")
    one_line_error(invoke("train", corpus_file, "--out", tmp_path, "--max-steps", "1"), 1,
                   "CHARNN_CACHE='~no_such_user_charnn/x' starts at a home folder that cannot be found")
    monkeypatch.delenv("CHARNN_CACHE")

    def no_home():
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(pathlib.Path, "home", staticmethod(no_home))
    one_line_error(invoke("train", corpus_file, "--out", tmp_path, "--max-steps", "1"), 1,
                   "no home folder for charnn's cache (HOME is unset); set CHARNN_CACHE")
    r = invoke("sample", trained_run.run_dir, "--length", "5", "-q")  # (compiled kernels only cache: it samples)
    assert r.exit_code == 0 and len(r.stdout) >= 5, r.stderr


def test_sample_reads_its_prime_file_and_adapt_file_in_the_encoding_given(trained_run, tmp_path):
    """sample had no --encoding, yet its errors for a latin-1 --prime-file said to pass one."""
    (tmp_path / "p.txt").write_bytes("the cat ".encode("utf-16"))
    r = invoke("sample", trained_run.run_dir, "--prime-file", tmp_path / "p.txt", "--encoding", "utf-16", "--length",
               "5", "--seed", "1", "-q")
    assert r.exit_code == 0 and r.stdout.startswith("the cat "), r.stderr
    r = invoke("sample", trained_run.run_dir, "--adapt", tmp_path / "p.txt", "--encoding", "utf-16", "--length", "5",
               "-q")
    assert r.exit_code == 0, r.stderr
    one_line_error(invoke("sample", trained_run.run_dir, "--prime-file", tmp_path / "p.txt", "--encoding", "nope"), 2,
                   "unknown encoding")
    one_line_error(invoke("sample", trained_run.run_dir, "--prime-file", ""), 1, "is an empty string")  # (it said
    # "is a directory": Path('') is the current folder)
