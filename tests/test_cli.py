"""Each subcommand through Typer's CliRunner, with the stdout/stderr split checked, plus a real pipeline."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from charnn import __version__
from charnn.cli import app
from charnn.errors import CharnnError, ConfigError

runner = CliRunner()
TINY_FLAGS = ["--hidden", "32", "--embed", "8", "--layers", "2", "--batch-size", "4", "--seq-len", "16",
              "--max-steps", "6", "--eval-every", "3", "--device", "cpu", "--quiet"]


def invoke(*args, cwd=None):
    if cwd is None:
        return runner.invoke(app, [str(a) for a in args])
    old = os.getcwd()
    os.chdir(cwd)
    try:
        return runner.invoke(app, [str(a) for a in args])
    finally:
        os.chdir(old)


def test_version_and_help():
    r = invoke("--version")
    assert r.exit_code == 0 and r.stdout.strip() == f"charnn {__version__}"
    r = invoke("train", "--help")
    assert r.exit_code == 0 and "--max-time" in r.stdout and "--cell" in r.stdout


@pytest.mark.parametrize("command", [[], ["sample"], ["train"], ["serve"]])
def test_help_shows_no_value_type_beside_flags(command):
    """Typer >= 0.29 wrote `<bool>` beside every flag (`--greedy <bool>`), as if it took a value."""
    r = invoke(*command, "--help")
    assert r.exit_code == 0 and "--help" in r.stdout
    assert "<bool>" not in r.stdout and "BOOLEAN" not in r.stdout


def test_train_writes_best_and_last_and_names_run_after_corpus(tmp_path, corpus_file):
    r = invoke("train", corpus_file, "--out", tmp_path, *TINY_FLAGS[:-1])
    assert r.exit_code == 0, r.stderr
    assert r.stdout == ""  # training writes nothing to stdout
    assert "val" in r.stderr and "best.pt" in r.stderr
    assert (tmp_path / "tiny" / "best.pt").is_file() and (tmp_path / "tiny" / "last.pt").is_file()


def test_sample_stdout_is_only_text(trained_run):
    r = invoke("sample", trained_run.run_dir, "--length", "120", "--seed", "7", "--prime", "the ")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.startswith("the ")
    assert len(r.stdout) == len("the ") + 120 + (0 if r.stdout[-2] == "\n" else 1) or r.stdout.endswith("\n")
    assert r.stdout.endswith("\n")
    assert "seed 7" in r.stderr and "chars/s" in r.stderr  # notes go to stderr
    assert "sampling" not in r.stdout


def test_sample_length_counts_generated_characters(trained_run):
    r = invoke("sample", trained_run.run_dir / "best.pt", "--length", "300", "--seed", "1", "--quiet")
    assert r.exit_code == 0
    body = r.stdout[:-1] if r.stdout.endswith("\n") and len(r.stdout) == 301 else r.stdout
    assert len(body) == 300
    assert r.stderr == ""


def test_sample_is_reproducible_with_a_seed_and_top_k(trained_run):
    a = invoke("sample", trained_run.run_dir, "--seed", "5", "--top-k", "3", "--temperature", "0.8", "-q")
    b = invoke("sample", trained_run.run_dir, "--seed", "5", "--top-k", "3", "--temp", "0.8", "-q")
    c = invoke("sample", trained_run.run_dir, "--seed", "6", "--top-k", "3", "--temp", "0.8", "-q")
    assert a.stdout == b.stdout != c.stdout


def test_sample_without_checkpoint_uses_newest_run(tmp_path, trained_run):
    runs = tmp_path / "checkpoints"
    shutil.copytree(trained_run.run_dir, runs / "older")
    shutil.copytree(trained_run.run_dir, runs / "newer")
    os.utime(runs / "older" / "best.pt", (1, 1))
    os.utime(runs / "older" / "last.pt", (1, 1))
    r = invoke("sample", "--length", "10", "--seed", "1", cwd=tmp_path)
    assert r.exit_code == 0, r.stderr
    assert "newer" in r.stderr


def test_sample_with_no_runs_says_how_to_train(tmp_path):
    r = invoke("sample", cwd=tmp_path)
    assert r.exit_code == 1
    assert r.stdout == ""
    assert "charnn train" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_eval_json_and_table(trained_run, corpus_file, tmp_path):
    r = invoke("eval", trained_run.run_dir / "best.pt", corpus_file, "--json")
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    for key in ("nats_per_char", "bits_per_char", "nats_per_token", "perplexity", "chars", "tokens"):
        assert key in out
    text = corpus_file.read_text()
    assert out["chars"] == len(text) == out["tokens"]  # every character is scored, the first one too
    assert out["bits_per_char"] == pytest.approx(out["nats_per_char"] / 0.6931471805599453)
    assert out["perplexity"] == pytest.approx(2.718281828459045 ** out["nats_per_char"])
    table = invoke("eval", trained_run.run_dir, corpus_file)
    assert table.exit_code == 0 and "bits/char" in table.stdout
    assert f"{out['nats_per_char']:.4f}" in table.stdout
    long = tmp_path / "a-name-longer-than-the-thirty-characters-of-the-old-column.txt"
    long.write_text(text)
    lines = invoke("eval", trained_run.run_dir, corpus_file, long).stdout.splitlines()
    assert len(lines) >= 3 and len({len(line) for line in lines}) == 1  # the columns stay aligned
    for forgot in (trained_run.run_dir, trained_run.run_dir / "best.pt"):  # the FILE left off: said so (it was
        r = invoke("eval", forgot)  # read as the text: "looks binary", "is a directory")
        assert r.exit_code == 2 and "give the FILE to score after it" in r.stderr and r.stdout == ""
    r = invoke("eval", trained_run.run_dir, corpus_file, "--uniform-prior")  # (ignored on a plain model)
    assert r.exit_code == 2 and "--uniform-prior" in r.stderr and r.stdout == ""


def test_a_diverged_models_scores_are_infinite_and_its_json_strict():
    """A checkpoint that diverged scores ~1e15 nats/char: perplexity inf (exp overflows), and --json writes what
    cannot be a JSON number as null (json.dumps would write Infinity, which strict readers refuse)."""
    from charnn.cli.output import json_line
    from charnn.scoring.evaluate import EvalResult
    r = EvalResult(nats=7.8e14 * 10, tokens=10, chars=10)
    assert r.perplexity == float("inf") and EvalResult(0.0, 0, 0).perplexity != EvalResult(0.0, 0, 0).perplexity
    assert EvalResult(nats=7090.0, tokens=10, chars=10).perplexity == pytest.approx(2.718281828459045 ** 709)
    line = json_line({**r.to_dict(), "nested": [float("nan"), 1.5, {"x": float("-inf")}], "name": "a"})
    assert json.loads(line) == {**r.to_dict(), "perplexity": None, "nested": [None, 1.5, {"x": None}], "name": "a"}


@pytest.mark.parametrize("args, code, words", [
    (["train", "no-such-file.txt"], 1, "does not exist"),
    (["train", "--layers", "0"], 2, "--layers"),
    (["train", "--max-time", "soon"], 2, "--max-time"),
    (["train", "--device", "tpu"], 2, "--device"),
    (["sample", "--temp", "-0.5"], 2, "--temp"),
    (["sample", "--top-k", "0"], 2, "--top-k"),
    (["sample", "missing.pt"], 1, "does not exist"),
    (["eval", "missing.txt"], 1, "no trained runs"),
])
def test_user_errors_are_one_line(tmp_path, args, code, words):
    r = invoke(*args, cwd=tmp_path)
    assert r.exit_code == code, (r.stdout, r.stderr)
    assert words in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_not_utf8_names_the_byte_offset(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"hello \xff world")
    r = invoke("train", bad, "--out", tmp_path)
    assert r.exit_code == 1 and "offset 6" in r.stderr


def test_prime_with_unknown_characters_is_an_error(trained_run):
    r = invoke("sample", trained_run.run_dir, "--prime", "Zebra\u2603")
    assert r.exit_code == 1 and "vocabulary lacks" in r.stderr and "'\u2603'" in r.stderr


def test_real_pipeline_into_head_ends_quietly(trained_run):
    cmd = (f"set -o pipefail; {sys.executable} -m charnn sample {trained_run.run_dir} --length 200000 --seed 3 "
           f"| head -c 50")
    p = subprocess.run(["bash", "-c", cmd], capture_output=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert len(p.stdout) == 50
    assert b"Traceback" not in p.stderr and b"BrokenPipe" not in p.stderr and b"Exception" not in p.stderr


def test_python_dash_m_help():
    p = subprocess.run([sys.executable, "-m", "charnn", "--help"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "train" in p.stdout and "sample" in p.stdout and "eval" in p.stdout


def test_help_and_version_to_a_closed_pipe_or_a_full_disk():
    """`charnn train --help | head` exited 1 with nothing said (rich's answer to a broken pipe); to /dev/full,
    --help and --version were tracebacks."""
    p = subprocess.run(["bash", "-c", f"set -o pipefail; {sys.executable} -m charnn train --help | head -c 10"],
                       capture_output=True, timeout=120)
    assert p.returncode == 0 and len(p.stdout) == 10 and p.stderr == b"", p.stderr
    if os.path.exists("/dev/full"):
        for flag, what in (("--help", "the help"), ("--version", "the version")):
            with open("/dev/full", "w") as full:
                p = subprocess.run([sys.executable, "-m", "charnn", flag], stdout=full, stderr=subprocess.PIPE,
                                   text=True, timeout=120)
            assert p.returncode == 1 and p.stderr.strip() == f"charnn: error: cannot write {what}: No space left on " \
                "device", p.stderr


def test_an_option_without_its_value_names_its_command():
    r = invoke("sample", "--temp")  # (it said "see 'charnn --help'")
    assert r.exit_code == 2 and r.stderr.strip() == ("charnn sample: error: Option '--temp' requires an argument. "
                                                     "(see 'charnn sample --help')"), r.stderr


@pytest.mark.parametrize("exc, code, says", [
    (CharnnError("corpus 'x' does not exist"), 1, "corpus 'x' does not exist"),
    (ConfigError("`--top-p` must be in (0, 1]"), 2, "`--top-p` must be in (0, 1]"),
    (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore"), 1, "out of memory"),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"), 1, "out of memory"),
    (MemoryError(), 1, "out of memory"),
    (OSError(12, "Cannot allocate memory"), 1, "out of memory"),  # (numpy's memmap under a limit: a traceback)
    (OSError(36, "File name too long", "out of memory.txt"), 1, "cannot use 'out of memory.txt': File name too long"),
    (KeyboardInterrupt(), 130, "interrupted"),
])
def test_user_errors_turn_what_a_user_can_cause_into_one_line_and_an_exit_code(exc, code, says, capsys, monkeypatch):
    import typer

    from charnn.cli.output import user_errors
    monkeypatch.delenv("CHARNN_DEBUG", raising=False)
    with pytest.raises(typer.Exit) as info:
        with user_errors():
            raise exc
    assert info.value.exit_code == code
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_out_of_memory_names_the_running_commands_own_flags(monkeypatch):
    """The hint named --batch-size and --hidden for every command (`charnn sample -n 100000000` has neither)."""
    import charnn.cli.sample as sample_cli
    import charnn.training.run as train_run

    def oom(*a, **k):
        raise MemoryError()
    monkeypatch.setattr(sample_cli, "SampleConfig", oom)
    r = invoke("sample", "-n", "5")
    assert r.exit_code == 1 and "out of memory; try fewer --num-samples" in r.stderr
    monkeypatch.setattr(train_run, "train_configs", oom)
    r = invoke("train", "--max-steps", "1")
    assert r.exit_code == 1 and "out of memory; try a smaller --batch-size, --seq-len or --hidden" in r.stderr
    import charnn.cli.novelty as novelty_cli
    monkeypatch.setattr(novelty_cli, "split_checkpoint", oom)
    r = invoke("novelty", "x.txt")
    assert r.exit_code == 1 and "out of memory; try a machine with more memory" in r.stderr


def test_user_errors_let_a_bug_show_and_debug_show_everything(monkeypatch):
    from charnn.cli.output import user_errors
    monkeypatch.delenv("CHARNN_DEBUG", raising=False)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        with user_errors():
            raise RuntimeError("shape mismatch")  # not an allocation failure: a bug, with its traceback
    monkeypatch.setenv("CHARNN_DEBUG", "1")
    with pytest.raises(CharnnError):
        with user_errors():
            raise CharnnError("x")
    from charnn.cli.output import debugging
    for off in ("", "0", "false", "No", " off "):  # (CHARNN_DEBUG=false turned tracebacks on)
        monkeypatch.setenv("CHARNN_DEBUG", off)
        assert not debugging(), off
    for on in ("1", "true", "yes", "2"):
        monkeypatch.setenv("CHARNN_DEBUG", on)
        assert debugging(), on


def test_durations_take_units_and_exponents_and_refuse_what_is_not_one():
    from charnn.config import parse_duration
    from charnn.errors import ConfigError
    assert [parse_duration(t) for t in ("90", "90s", "5m", "1h", "1e4", "1.5e3s", "2e-1m")] == \
        [90, 90, 300, 3600, 10000, 1500, 12]
    for bad in ("soon", "0", "-5s", "9e999", "1e-400"):
        with pytest.raises(ConfigError, match="--max-time"):
            parse_duration(bad)


def test_stdout_in_another_encoding_becomes_utf8(monkeypatch):
    """Windows gives a pipe or a file cp1252 (a Latin-1 locale, Latin-1): a sampled 'ş' was a UnicodeEncodeError
    after the work was done. charnn's main() makes such a pipe UTF-8 (its error handler kept); a terminal keeps its
    encoding with '?' for what it lacks; PYTHONIOENCODING wins."""
    import importlib
    import io

    cli_app = importlib.import_module("charnn.cli.app")  # (the module: charnn.cli's `app` is the Typer app)
    monkeypatch.delenv("PYTHONIOENCODING", raising=False)
    raw = io.BytesIO()
    pipe = io.TextIOWrapper(raw, encoding="cp1252", errors="backslashreplace")
    monkeypatch.setattr(cli_app.sys, "stdout", pipe)
    monkeypatch.setattr(cli_app, "app", lambda prog_name: print("ş→é"))  # what a command writes
    cli_app.main()
    pipe.flush()
    assert raw.getvalue() == "ş→é\n".encode("utf-8") and pipe.errors == "backslashreplace"

    class Terminal(io.TextIOWrapper):
        def isatty(self):
            return True

    screen = io.BytesIO()
    tty = Terminal(screen, encoding="latin-1")
    cli_app.utf8_output(tty)
    tty.write("ş→é")
    tty.flush()
    assert tty.encoding == "latin-1" and screen.getvalue() == "??é".encode("latin-1")
    monkeypatch.setenv("PYTHONIOENCODING", "cp1252")  # the user's encoding stays; what it lacks is replaced (it
    kept = io.TextIOWrapper(io.BytesIO(), encoding="cp1252")  # was a traceback), unless they named a handler
    errors = io.TextIOWrapper(io.BytesIO(), encoding="cp1252", errors="backslashreplace")  # stderr's
    cli_app.utf8_output(kept, errors)
    assert kept.encoding == "cp1252" and kept.errors == "replace" and errors.errors == "backslashreplace"
    monkeypatch.setenv("PYTHONIOENCODING", "cp1252:strict")
    strict = io.TextIOWrapper(io.BytesIO(), encoding="cp1252")
    cli_app.utf8_output(strict)
    assert strict.encoding == "cp1252" and strict.errors == "strict"


def test_a_stdout_encoding_that_lacks_a_character_is_never_a_traceback(tmp_path):
    """PYTHONIOENCODING=ascii: 'é' is written as '?' (was a UnicodeEncodeError traceback); ascii:strict, the
    user's own handler: one line, exit 1."""
    import subprocess
    import sys

    from conftest import subprocess_env
    (tmp_path / "t.txt").write_text("café au lait " * 200, encoding="utf-8")
    run = [sys.executable, "-m", "charnn"]
    env = subprocess_env()
    assert subprocess.run([*run, "train", str(tmp_path / "t.txt"), "--out", str(tmp_path), "--hidden", "16",
                           "--batch-size", "4", "--seq-len", "16", "--max-steps", "2"], env=env,
                          capture_output=True).returncode == 0
    sample = [*run, "sample", str(tmp_path / "t"), "--prime", "caf\u00e9", "--length", "3", "-q"]
    r = subprocess.run(sample, env={**env, "PYTHONIOENCODING": "ascii"}, capture_output=True)
    assert r.returncode == 0 and r.stdout.startswith(b"caf?") and not r.stderr
    r = subprocess.run(sample, env={**env, "PYTHONIOENCODING": "ascii:strict"}, capture_output=True)
    assert r.returncode == 1 and (r.stdout == b"" or r.stdout.startswith(b"caf"))
    assert r.stderr.decode().count("\n") == 1 and "encoding ascii has no" in r.stderr.decode()


def test_a_symbolic_link_loop_or_a_broken_link_is_named_not_called_missing(tmp_path, monkeypatch):
    """Path.exists() says False for both; the one line says which (was: "does not exist" for a loop)."""
    from conftest import one_line_error

    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    (tmp_path / "broken.txt").symlink_to(tmp_path / "nowhere.txt")
    for args, what in ((["train", "a", "--max-steps", "1"], "corpus 'a' goes through a loop of symbolic links"),
                       (["sample", "a"], "checkpoint 'a' goes through a loop of symbolic links"),
                       (["train", "broken.txt"], f"is a symbolic link to {str(tmp_path / 'nowhere.txt')!r}, which "
                                                 "does not exist"),
                       (["plot", "a"], "run 'a' goes through a loop"),
                       (["train", "gone.txt"], "corpus 'gone.txt' does not exist")):
        monkeypatch.chdir(tmp_path)
        one_line_error(runner.invoke(app, args), 1, what)


def test_a_mistyped_run_before_the_files_is_named_where_there_is_no_run(tmp_path, monkeypatch):
    """eval RUN FILE and transduce RUN with RUN mistyped and no run to fall back on: the line names RUN (it said "no
    trained runs under 'checkpoints'; ... or pass a checkpoint path", as though none had been passed)."""
    from conftest import one_line_error

    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("some text\n")
    for args in (["eval", "runs/mistyped", "notes.txt"], ["transduce", "runs/mistyped"], ["novelty", "runs/mistyped"],
                 ["classify", "runs/mistyped", "notes.txt"], ["classify", "runs/mistyped"]):
        one_line_error(runner.invoke(app, args, input="abc\n"), 1,
                       "'runs/mistyped' does not exist: neither a checkpoint (a .pt file or a run folder) nor an "
                       "input file")


def test_sample_builds_the_c_library_only_for_a_cpu_run(monkeypatch, capsys):
    """A GPU run never uses charnn's C library, so sampling there does not compile it (on a Mac without Xcode's
    tools the attempt opened a dialog)."""
    from charnn.cli.sample import _stream
    from charnn.models import native

    class Sampler:  # what _stream reads of charnn's Sampler
        notes, chars, watch = [], 3, None

        def __iter__(self):
            return iter(["abc"])

    built = []
    monkeypatch.setattr(native, "library", lambda: built.append(1))
    _stream(Sampler(), True, cpu=False)
    assert built == []
    _stream(Sampler(), True, cpu=True)
    assert built == [1] and capsys.readouterr().out == "abc\nabc\n"


def test_an_error_line_quoting_a_huge_value_is_cut_in_the_middle():
    """A 100,000-character --device was echoed whole: one error line 100k characters long."""
    r = invoke("sample", "--device", "z" * 100_000)
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1 and len(r.stderr) < 2100, len(r.stderr)
    assert "characters left out" in r.stderr and "--device" in r.stderr


def test_eval_reads_one_file_at_a_time_and_checks_them_all_first(trained_run, corpus_file, tmp_path, monkeypatch):
    """Each FILE is read when its turn comes and its text let go before scoring (all of them were read first, and
    every text held twice over as ids: about 17 bytes a character of the files together, now ~9 of the largest);
    a FILE that cannot be read still fails at once, before the others are scored; and the scores are the same."""
    import charnn.cli.evaluate as cli_eval
    import charnn.scoring.evaluate as scoring

    whole = json.loads(invoke("eval", trained_run.run_dir, corpus_file, corpus_file, "--json").stdout)
    order, read, score = [], cli_eval._read, scoring.score_ids
    monkeypatch.setattr(cli_eval, "_read", lambda *a: (order.append("read"), read(*a))[1])
    monkeypatch.setattr(scoring, "score_ids", lambda *a, **k: (order.append("score"), score(*a, **k))[1])
    r = invoke("eval", trained_run.run_dir, corpus_file, corpus_file, "--json")
    assert r.exit_code == 0, r.stderr
    assert order == ["read", "score", "read", "score"] and json.loads(r.stdout) == whole
    (tmp_path / "blob.bin").write_bytes(b"\x00\x01" * 100)
    for bad, said in ((tmp_path / "gone.txt", "does not exist"), (tmp_path / "blob.bin", "binary"),
                      (tmp_path, "is a directory")):
        order.clear()
        r = invoke("eval", trained_run.run_dir, corpus_file, bad)
        assert r.exit_code != 0 and said in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert order == []  # refused before the first file was read or scored


def test_the_scoring_context_is_the_start_id_then_the_ids_whatever_the_tokenizer():
    from charnn.scoring.evaluate import scoring_context, with_start
    from charnn.text.tokenizer import CharTokenizer

    tok = CharTokenizer("abc \n")
    text = "abc cab\nzz" * 3  # z: unknown
    assert scoring_context(tok, text).tolist() == with_start(tok, tok.encode(text)).tolist()
    assert scoring_context(tok, text)[0] == with_start(tok, [])[0] and len(scoring_context(tok, "")) == 1
    assert scoring_context(CharTokenizer(""), "ab").tolist()[1:] == [0, 0]  # (an empty vocabulary: all unknown)


def test_a_character_models_scoring_context_takes_a_byte_an_id_and_scores_the_same(trained_run, corpus_file):
    """The ids were int64: 8 of the 9 bytes a character `charnn eval` held; the smallest type that holds the
    vocabulary now (1 byte for up to 256 characters, 2 for up to 32,768), with the same score."""
    from charnn.checkpoint import build_from_checkpoint, load_checkpoint
    from charnn.scoring.evaluate import evaluate_context, scoring_context
    from charnn.text.tokenizer import CharTokenizer

    model, tok = build_from_checkpoint(load_checkpoint(trained_run.run_dir / "best.pt"))
    text = corpus_file.read_text(encoding="utf-8")
    small = scoring_context(tok, text)
    assert small.itemsize == 1 and small.tolist() == scoring_context(tok, text).astype("int64").tolist()
    big = evaluate_context(model, tok, small.astype("int64"), torch.device("cpu"))
    assert evaluate_context(model, tok, small, torch.device("cpu")).nats == big.nats
    wide = CharTokenizer([chr(0x4E00 + i) for i in range(300)])
    assert scoring_context(wide, chr(0x4E00 + 299) * 3).tolist() == [1, 300, 300, 300]
    assert scoring_context(wide, "").itemsize == 2


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_eval_and_prime_files_read_a_pipe_once_and_whole(trained_run, corpus_file, tmp_path):
    """`charnn eval RUN <(cat f)`: the check of each FILE's head read a pipe's first 8 kB, which were then gone
    (a 20,000-character text scored as 3,616 characters, a short one 'is empty'; a FIFO hung)."""
    import threading

    from conftest import subprocess_env

    from charnn.data.corpus import read_text

    text = corpus_file.read_text(encoding="utf-8")
    text = (text * (20000 // len(text) + 1))[:20000]
    fifo = tmp_path / "pipe"

    def feed():
        try:
            with open(fifo, "w", encoding="utf-8") as f:
                f.write(text)
        except BrokenPipeError:
            pass

    os.mkfifo(fifo)
    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    r = subprocess.run([sys.executable, "-m", "charnn", "eval", str(trained_run.run_dir), str(fifo), "--json"],
                       capture_output=True, text=True, timeout=120, env=subprocess_env())
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["chars"] == 20000
    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    assert read_text(str(fifo), "file") == text
