"""A full disk while charnn writes: checkpoints, config.json, metrics.jsonl, the encoding cache, downloads.

Each must end in one CharnnError (one line, exit 1 from the CLI) that names the folder and the space needed
and free, keep the previous file as it was and leave no temporary file. The real tests write into a small
tmpfs (mounting needs root: they skip, saying so, where it is not allowed); the simulated ones run everywhere.
"""

import errno
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import make_text, one_line_error, subprocess_env
from typer.testing import CliRunner

import charnn.checkpoint
from charnn.checkpoint import load_checkpoint, save_checkpoint
from charnn.cli import app
from charnn.data import cache, catalog
from charnn.errors import CharnnError
from charnn.training.metrics import CONFIG_FILE, METRICS_FILE, MetricsLogger, read_metrics, write_text_atomic

runner = CliRunner()
SMALL = ["--hidden", "16", "--embed", "8", "--layers", "1", "--batch-size", "4", "--seq-len", "16", "--device", "cpu",
         "--save-every-secs", "0", "--quiet"]
ENOSPC = os.strerror(errno.ENOSPC)  # "No space left on device"


def _mount(folder: Path, size: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill up needs root; the simulated full-disk tests still run")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"mount -t tmpfs is not permitted here ({r.stderr.strip() or r.returncode}); "
                    "the simulated full-disk tests still run")


@pytest.fixture
def tmpfs(tmp_path):
    """mount(size) -> a fresh folder on a tmpfs of `size` bytes, unmounted after the test."""
    mounted = []

    def mount(size: int, name: str = "disk") -> Path:
        folder = tmp_path / name
        _mount(folder, size)
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def fill(folder: Path, leave: int = 0) -> None:
    """Fill the filesystem of `folder` until at most `leave` bytes are free."""
    with open(folder / "filler", "wb") as f:
        try:
            while True:
                free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
                if free <= leave:
                    break
                f.write(b"\0" * min(65536, max(1, free - leave)))
                f.flush()
        except OSError:
            pass


def temp_files(folder: Path) -> list:
    """Temp files and half-built cache entries (`.KEY-XXXX/`) left under `folder`."""
    return [p.name for p in folder.rglob("*") if p.name.endswith((".tmp", ".part"))
            or p.is_dir() and p.name.startswith(".") and p.name != ".locks"]


def checkpoint(n: int) -> dict:
    return {"model_config": {}, "tokenizer": {}, "model": {"w": torch.arange(n, dtype=torch.float32)}}


# ---- on a real full filesystem (tmpfs) ---------------------------------------------------------------------
def test_a_checkpoint_that_does_not_fit_keeps_the_old_one(tmpfs):
    disk = tmpfs(256 << 10)
    save_checkpoint(checkpoint(10_000), disk / "best.pt")  # 40 kB fits
    before = (disk / "best.pt").read_bytes()
    with pytest.raises(CharnnError) as e:
        save_checkpoint(checkpoint(100_000), disk / "best.pt")  # 400 kB does not: torch.save's RuntimeError
    msg = str(e.value)
    assert "\n" not in msg and str(disk) in msg and ENOSPC in msg, msg
    assert re.search(r"it needs about 40\d\.\d kB, \d+\.\d kB free\); the previous best.pt is kept", msg), msg
    assert "choose another --out" in msg
    assert (disk / "best.pt").read_bytes() == before and sorted(p.name for p in disk.iterdir()) == ["best.pt"]
    assert load_checkpoint(disk / "best.pt")["model"]["w"].numel() == 10_000


def test_config_and_metrics_on_a_full_disk(tmpfs):
    disk = tmpfs(64 << 10)
    log = MetricsLogger(disk, every=1, config={"model": "x"})
    log("start", {"step": 0})
    log("saved", {"path": str(disk / "last.pt"), "step": 0})
    step = {"step": 1, "loss": 2.0, "epoch": 0.1, "lr": 0.01, "chars_per_sec": 100.0, "elapsed": 1.0}
    log("step", step)
    log("step", {**step, "step": 2})  # writes step 1's record
    assert [r["step"] for r in read_metrics(disk / METRICS_FILE)] == [1]
    fill(disk)
    with pytest.raises(CharnnError) as e:  # the next record does not fit: no half line is left
        for s in range(3, 2000):
            log("step", {**step, "step": s})
    msg = str(e.value)
    assert f"could not write {METRICS_FILE} in {str(disk)!r}: {ENOSPC}" in msg and "free" in msg, msg
    assert (disk / METRICS_FILE).read_text().endswith("\n")
    good = [r["step"] for r in read_metrics(disk / METRICS_FILE)]
    assert good == list(range(1, len(good) + 1))
    old = (disk / CONFIG_FILE).read_text()
    with pytest.raises(CharnnError) as e:  # a config.json bigger than what is left: the old one stays
        write_text_atomic(disk / CONFIG_FILE, json.dumps({"pad": "x" * 100_000}))
    assert f"could not write {CONFIG_FILE} in {str(disk)!r}: {ENOSPC} (it needs about 100.0 kB" in str(e.value)
    assert (disk / CONFIG_FILE).read_text() == old and temp_files(disk) == []


def test_the_encoding_cache_on_a_full_disk(tmpfs, tmp_path, monkeypatch):
    disk = tmpfs(64 << 10)
    monkeypatch.setenv("CHARNN_CACHE", str(disk))
    big = tmp_path / "big.txt"
    big.write_text(make_text(4000, seed=1), encoding="utf-8")  # ~200 kB of ids, as uint8
    r = runner.invoke(app, ["train", str(big), "--out", str(tmp_path / "runs"), "--max-steps", "2", *SMALL])
    one_line_error(r, 1, "could not write the encoded corpus", str(disk / "encoded"), ENOSPC, "it needs more than",
                   "CHARNN_CACHE")
    assert temp_files(disk) == [] and not list((disk / "encoded").glob("[0-9a-f]*"))


def test_a_download_on_a_full_disk(tmpfs, tmp_path, monkeypatch):
    disk = tmpfs(64 << 10)
    monkeypatch.setenv("CHARNN_CACHE", str(disk))
    text = (make_text(4000, seed=2)).encode()
    src = tmp_path / "big.txt"
    src.write_bytes(text)
    archive = tmp_path / "big.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("big.txt", text)  # compresses to a few kB: the archive fits, the text does not
    entries = [{"name": "plain", "url": src.as_uri(), "sha256": None, "size": len(text)},
               {"name": "zipped", "url": archive.as_uri(), "sha256": None, "size": archive.stat().st_size,
                "member": "big.txt"}]
    for entry in entries:
        with pytest.raises(CharnnError) as e:
            catalog.fetch(entry)
        msg = str(e.value)
        assert "\n" not in msg and str(disk / "corpora" / entry["name"]) in msg and ENOSPC in msg, msg
        assert f"it needs about {len(text) / 1e3:.1f} kB" in msg and "CHARNN_CACHE" in msg, msg
        assert temp_files(disk) == [] and not catalog.is_downloaded(entry)


def test_train_into_a_disk_that_fills_up_mid_run(tmpfs, tmp_path):
    """The issue's case end to end: `charnn train --out` on a filesystem that fills up at the second save."""
    corpus = tmp_path / "text.txt"
    corpus.write_text(make_text(200, seed=4), encoding="utf-8")
    # weights big enough (a 128-wide LSTM) that the write that meets the full disk is inside torch.save, which
    # then raises its RuntimeError: the traceback the issue reported
    args = [str(corpus), "--name", "run", "--max-steps", "20", "--eval-every", "10", *SMALL, "--hidden", "128"]
    r = runner.invoke(app, ["train", *args, "--out", str(tmp_path / "probe"), "--max-steps", "1"])
    assert r.exit_code == 0, r.stderr
    size = (tmp_path / "probe" / "run" / "last.pt").stat().st_size
    disk = tmpfs(int(2.5 * size) + (16 << 10))  # step 10 saves last.pt and best.pt; step 20's last.pt does not fit
    proc = subprocess.run([sys.executable, "-m", "charnn", "train", *args, "--out", str(disk)],
                          capture_output=True, text=True, env=subprocess_env(), timeout=600)
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    run = disk / "run"
    # (step 20 improves: best.pt is written first, and that write meets the full disk)
    name = "best.pt" if "could not write best.pt" in proc.stderr else "last.pt"
    for words in (f"could not write {name}", str(run), ENOSPC, "it needs about", "free", f"previous {name} is kept"):
        assert words in proc.stderr, (words, proc.stderr)
    assert load_checkpoint(run / "best.pt")["step"] == 10 and load_checkpoint(run / "last.pt")["step"] == 10
    assert temp_files(disk) == []


# ---- simulated: where no tmpfs can be mounted, and the cases a real disk cannot stage ------------------------
def test_a_simulated_enospc_at_fsync_keeps_the_old_file(tmp_path, monkeypatch):
    # a network filesystem often reports the full disk only at fsync
    save_checkpoint(checkpoint(100), tmp_path / "last.pt")
    write_text_atomic(tmp_path / CONFIG_FILE, "old")
    before = (tmp_path / "last.pt").read_bytes()

    def no_space(fd):
        raise OSError(errno.ENOSPC, ENOSPC)

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(CharnnError) as e:
        save_checkpoint(checkpoint(1000), tmp_path / "last.pt")
    assert f"could not write last.pt in {str(tmp_path)!r}: {ENOSPC} (it needs about" in str(e.value)
    assert "the previous last.pt is kept" in str(e.value)
    with pytest.raises(CharnnError, match=f"could not write {CONFIG_FILE} in .*it needs about 3 B"):
        write_text_atomic(tmp_path / CONFIG_FILE, "new")
    assert (tmp_path / "last.pt").read_bytes() == before and (tmp_path / CONFIG_FILE).read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == [CONFIG_FILE, "last.pt"]


def test_torch_saves_hidden_enospc_is_found_and_real_bugs_go_through(tmp_path, monkeypatch):
    real_save = torch.save

    def save_as_torch_fails(obj, f, *a, **k):  # what torch.save does on a full disk: the OSError as context
        f.write(b"half a checkpoint")
        try:
            raise OSError(errno.ENOSPC, ENOSPC)
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(charnn.checkpoint.torch, "save", save_as_torch_fails)
    with pytest.raises(CharnnError, match=ENOSPC):
        save_checkpoint(checkpoint(100), tmp_path / "best.pt")
    assert list(tmp_path.iterdir()) == []

    def a_bug(obj, f, *a, **k):
        f.write(b"half")
        raise RuntimeError("unexpected pos 1 vs 2")  # torch's words, but the disk has room: not a full disk

    monkeypatch.setattr(charnn.checkpoint.torch, "save", a_bug)
    with pytest.raises(RuntimeError, match="unexpected pos"):
        save_checkpoint(checkpoint(100), tmp_path / "best.pt")
    for bug in (RuntimeError("shape mismatch"), TypeError("cannot pickle")):
        def raise_bug(obj, f, *a, _bug=bug, **k):
            raise _bug
        monkeypatch.setattr(charnn.checkpoint.torch, "save", raise_bug)
        with pytest.raises(type(bug)):
            save_checkpoint(checkpoint(100), tmp_path / "best.pt")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(charnn.checkpoint.torch, "save", real_save)


def test_numpys_short_write_into_the_cache_is_a_full_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("CHARNN_CACHE", str(tmp_path))
    writer = cache.EntryWriter("ab" * 16)
    writer.ids.write(b"\0" * 1000)
    with pytest.raises(CharnnError) as e:
        try:
            raise OSError("65536 requested and 1234 written")  # what ndarray.tofile raises, errno unset
        except OSError:
            writer.abort()
    assert f"could not write the encoded corpus abababababab in {str(tmp_path / 'encoded')!r}: {ENOSPC}" in str(e.value)
    assert "it needs more than 1.0 kB" in str(e.value)
    assert list((tmp_path / "encoded").iterdir()) == [] or temp_files(tmp_path) == []
    writer = cache.EntryWriter("cd" * 16)
    try:  # a read error of the corpus is not the cache's: it goes on as it was
        raise OSError(errno.EIO, "Input/output error")
    except OSError:
        writer.abort()
    assert not writer.tmp.exists()


def test_a_cache_entry_is_readable_by_others_and_a_file_in_its_place_is_replaced(tmp_path, monkeypatch):
    """Entries were made 0700 (mkdtemp's): another user of a shared cache failed with "Directory not empty",
    naming a temporary folder. A file where an entry belongs failed every run ("Not a directory")."""
    import stat
    monkeypatch.setenv("CHARNN_CACHE", str(tmp_path))
    key = "ef" * 16
    cache.entry_dir(key).parent.mkdir(parents=True)
    cache.entry_dir(key).write_text("not an entry")
    writer = cache.EntryWriter(key)
    writer.ids.write(b"\1" * 10)
    final = writer.commit({"tokens": 10, "dtype": "uint8"})
    assert final.is_dir() and cache.find_entry(key) is not None
    mode = stat.S_IMODE(final.stat().st_mode)
    assert mode == 0o777 & ~cache.cache_umask()  # (umask 022: 0755, where mkdtemp made 0700)


def test_a_page_or_a_plot_that_does_not_fit_keeps_the_older_one(tmpfs):
    """show --html and plot -o wrote in place: a full disk left the older page cut off mid-data (one line said
    only "cannot write"), and a .pdf's zlib.error was a traceback."""
    from charnn.data.files import write_output
    disk = tmpfs(256 << 10)
    for name in ("x.html", "p.pdf"):
        write_output(disk / name, b"old" * 100, "the page")
    fill(disk, leave=4096)
    for name in ("x.html", "p.pdf"):
        with pytest.raises(CharnnError) as e:
            write_output(disk / name, b"new" * 20_000, "the page")
        assert ENOSPC in str(e.value) and f"the previous {name} is kept" in str(e.value), str(e.value)
        assert (disk / name).read_bytes() == b"old" * 100
    assert temp_files(disk) == []


@pytest.mark.parametrize("meta, memo", [("[1, 2]", "[]"), ('{"format": %d}', '{"x": 5}'),
                                        ('{"format": %d, "tokens": 10, "dtype": "bogus"}', '{"x": [1, 2, 3]}')])
def test_cache_files_of_another_shape_are_built_again(tmp_path, monkeypatch, meta, memo):
    """A meta.json or hashes.json that parses but is not what charnn wrote was an AttributeError, KeyError or
    TypeError: it counts as damaged, as one that does not parse."""
    monkeypatch.setenv("CHARNN_CACHE", str(tmp_path))
    key = "ab" * 16
    cache.entry_dir(key).mkdir(parents=True)
    (cache.entry_dir(key) / "ids.bin").write_bytes(b"\0" * 10)
    (cache.entry_dir(key) / "meta.json").write_text(meta.replace("%d", str(cache.FORMAT)))
    (tmp_path / "hashes.json").write_text(memo)
    assert cache.find_entry(key) is None
    assert all(isinstance(v, list) for v in cache.load_memo().values())


def test_an_output_path_that_is_a_link_is_written_through(tmp_path):
    """write_output renamed its new file over a symbolic link (a page's link, /dev/stdout's): the link became a
    file and what it pointed at kept the old content."""
    from charnn.data.files import write_output
    target = tmp_path / "real.html"
    target.write_bytes(b"old")
    link = tmp_path / "page.html"
    link.symlink_to(target)
    write_output(link, b"new", "the page")
    assert link.is_symlink() and target.read_bytes() == b"new"


def test_show_html_and_plot_keep_the_older_file_on_a_full_disk(tmpfs, trained_run, corpus_file, tmp_path):
    """show --html and plot -o wrote in place: a full disk left the older page cut off mid-data, and a .pdf's
    zlib.error was a traceback."""
    pytest.importorskip("matplotlib")
    disk = tmpfs(1 << 20)
    page, pdf = disk / "x.html", disk / "p.pdf"
    show = ["show", str(trained_run.run_dir), str(corpus_file), "--html", str(page), "--max-chars", "3000"]
    r = runner.invoke(app, ["train", str(corpus_file), "--out", str(tmp_path / "runs"), "--name", "m", "--max-steps",
                            "4", "--eval-every", "2", "--log-every", "1", *SMALL])
    assert r.exit_code == 0, r.stderr
    plot = ["plot", str(tmp_path / "runs" / "m"), "-o", str(pdf)]
    for args in (show, plot):
        r = runner.invoke(app, args)
        assert r.exit_code == 0, r.stderr
    before = {p: p.read_bytes() for p in (page, pdf)}
    fill(disk, leave=1024)
    for args in (show, plot):
        r = runner.invoke(app, args)
        assert r.exit_code == 1 and "Traceback" not in r.stderr and ENOSPC in r.stderr, r.stderr
        errors = [line for line in r.stderr.splitlines() if line.startswith("charnn: error:")]
        assert len(errors) == 1 and "is kept" in errors[0], r.stderr
    assert {p: p.read_bytes() for p in (page, pdf)} == before and temp_files(disk) == []


def test_an_interrupt_that_breaks_a_writer_inside_a_save_is_an_interrupt(tmp_path):
    """A third Ctrl-C inside torch.save (the first asks to stop, the second is held until the file is in place, a
    third is not): torch's zip writer failed with a RuntimeError over it, a 40-line traceback."""
    from charnn.data.files import atomic_file
    target = tmp_path / "best.pt"
    target.write_bytes(b"the older one")
    with pytest.raises(KeyboardInterrupt):
        with atomic_file(target) as f:
            f.write(b"half")
            try:
                raise KeyboardInterrupt
            except KeyboardInterrupt:
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 34660224")
    assert target.read_bytes() == b"the older one" and [p.name for p in tmp_path.iterdir()] == ["best.pt"]
    with pytest.raises(RuntimeError, match="a bug"):  # (any other error is still itself)
        with atomic_file(target) as f:
            raise RuntimeError("a bug")
