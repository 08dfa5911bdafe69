"""Results that cannot be written to stdout (issue 15.2): a full disk or a read-only target is one line on
stderr and exit 1, for every command that writes results to stdout; a closed pipe stays quiet."""

import os
import subprocess
import sys

import pytest
from conftest import subprocess_env


def _run(args, stdout, cwd):
    return subprocess.run([sys.executable, "-m", "charnn", *args], stdout=stdout, stderr=subprocess.PIPE,
                          cwd=cwd, env=subprocess_env(), text=True, timeout=300)


def _commands(trained_run, corpus_file):
    run = str(trained_run.run_dir)
    return [
        (["sample", run, "--length", "2000", "--seed", "1", "-q"], "the generated text"),
        (["eval", run, str(corpus_file), "--json"], "the results"),
        (["eval", run, str(corpus_file)], "the results"),
        (["info", run, "--json"], "the results"),
        (["info", run], "the results"),
        (["corpora", "--json"], "the results"),
    ]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full on this system")
def test_a_full_disk_on_stdout_is_one_line(trained_run, corpus_file, tmp_path):
    for args, what in _commands(trained_run, corpus_file):
        with open("/dev/full", "w") as full:
            p = _run(args, full, tmp_path)
        assert p.returncode == 1, (args, p.stderr)
        assert p.stderr.strip().splitlines()[-1] == f"charnn: error: cannot write {what}: No space left on device", \
            (args, p.stderr)
        assert "Traceback" not in p.stderr and "Exception ignored" not in p.stderr, p.stderr
        assert len([ln for ln in p.stderr.splitlines() if "error" in ln]) == 1


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full on this system")
def test_a_full_disk_on_stderr_loses_the_notes_not_the_results(trained_run, corpus_file, tmp_path):
    """Was: `charnn sample RUN 2>/dev/full` printed nothing and exited 1 (its "sampling ..." note failed)."""
    for args in (["sample", str(trained_run.run_dir), "--length", "50", "--seed", "1"],
                 ["eval", str(trained_run.run_dir), str(corpus_file), "--json"]):
        with open("/dev/full", "w") as full:
            p = subprocess.run([sys.executable, "-m", "charnn", *args], stdout=subprocess.PIPE, stderr=full,
                               cwd=tmp_path, env=subprocess_env(), text=True, timeout=300)
        assert p.returncode == 0 and p.stdout.strip(), (args, p.returncode)


def test_a_read_only_stdout_is_one_line(trained_run, corpus_file, tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("")
    for args, what in _commands(trained_run, corpus_file)[:2]:
        with open(target, "r") as read_only:  # a descriptor that cannot be written: EBADF
            p = _run(args, read_only, tmp_path)
        assert p.returncode == 1 and "Traceback" not in p.stderr, (args, p.stderr)
        assert f"charnn: error: cannot write {what}: Bad file descriptor" in p.stderr, p.stderr


def test_a_closed_pipe_stays_quiet_for_eval_and_info(trained_run, corpus_file, tmp_path):
    for args, _ in _commands(trained_run, corpus_file)[2:5]:
        cmd = f"set -o pipefail; {sys.executable} -m charnn {' '.join(args)} | head -c 1 > /dev/null"
        p = subprocess.run(["bash", "-c", cmd], cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True,
                           timeout=300)
        assert p.returncode == 0 and "Error" not in p.stderr and "Traceback" not in p.stderr, (args, p.stderr)


def test_a_closed_stdout_or_stdin_is_one_line_not_a_traceback(trained_run, corpus_file, tmp_path):
    """`>&-` and `<&-` leave Python's sys.stdout/sys.stdin None: an AttributeError traceback (sample), or nothing
    at all with exit 0 (eval, info)."""
    run = str(trained_run.run_dir)
    for cmd in (f"charnn sample {run} --length 10 -q >&-", f"charnn eval {run} {corpus_file} >&-",
                f"charnn info {run} >&-"):
        p = subprocess.run(["bash", "-c", cmd.replace("charnn", f"{sys.executable} -m charnn", 1)], cwd=tmp_path,
                           env=subprocess_env(), capture_output=True, text=True, timeout=300)
        assert p.returncode == 1 and "Traceback" not in p.stderr, (cmd, p.stderr)
        assert "stdout is closed" in p.stderr.strip().splitlines()[-1], (cmd, p.stderr)
    p = subprocess.run(["bash", "-c", f"{sys.executable} -m charnn sample {run} --prime-file - --length 5 -q <&-"],
                       cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 1 and p.stdout == "" and "Traceback" not in p.stderr, p.stderr  # a closed stdin is an
    assert p.stderr.strip() == "charnn: error: the prime file on stdin (-) is empty: stdin is closed (<&-)"  # empty
    # prime, as an empty file, and said why
