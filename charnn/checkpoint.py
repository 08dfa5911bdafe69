"""Checkpoints: one self-contained file of tensors and plain data, written atomically, loaded safely.

Format (version 1), a dict loadable with `torch.load(weights_only=True)`; documented in docs/CHECKPOINTS.md:
  format "charnn", version, charnn_version, model_config (dict), tokenizer (dict), model (state_dict),
  train_config (dict), step, epoch, chars_seen, elapsed, val_loss, best_val_loss, device, precision,
  optimizer (state_dict), progress (data position and carried hidden state) and rng (generator states).
"""

from __future__ import annotations

import codecs
import functools
import json
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from charnn import __version__
from charnn.config import ModelConfig
from charnn.data.files import atomic_file
from charnn.errors import CharnnError, first_line, missing, weights_problem
from charnn.models import registry
from charnn.models.lm import CharRNN
from charnn.models.seq2seq import Seq2Seq
from charnn.text.tokenizer import tokenizer_from_state

FORMAT = "charnn"
VERSION = 1
NAMES = ("best.pt", "last.pt")
PREVIOUS = "previous"  # where a fresh run's first save moves the older run of its name (one generation kept)


def save_checkpoint(data: dict, path: Path) -> None:
    """Write atomically (charnn.data.files.atomic_file): a temp file in the same folder, fsynced, renamed.

    A crash at any moment leaves either the old file or the new one, never half of one; a failed write (a
    full disk) leaves the old one and raises one CharnnError naming the folder and the space it needs.
    """
    path = Path(path)
    data = {"format": FORMAT, "version": VERSION, "charnn_version": __version__, **data}
    with atomic_file(path, size=lambda: saved_size(data), hint="choose another --out", what=path.name) as f:
        torch.save(data, f)


def saved_size(data) -> int:
    """About how many bytes torch.save writes for `data`: its tensors' storages (each once, 64-byte aligned)
    plus room for the pickled rest."""
    seen, total = set(), 4 << 10

    def walk(x):
        nonlocal total
        if isinstance(x, torch.Tensor):
            storage = x.untyped_storage()
            key = (storage.data_ptr(), storage.device, storage.nbytes())
            if key not in seen:
                seen.add(key)
                total += storage.nbytes() + 64 + 200  # + alignment and the zip entry
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)

    walk(data)
    return total


def is_checkpoint_file(path: Path) -> bool:
    """Whether the file is one torch.save wrote (a zip archive holding a data.pkl): a model an output file must not
    replace."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("data.pkl") for name in archive.namelist())
    except (OSError, zipfile.BadZipFile, ValueError):
        return False


def _looks_like_text(path: Path) -> bool:
    """Whether the file's first bytes are UTF-8 text (a checkpoint is a zip, or a legacy pickle's binary)."""
    try:
        with path.open("rb") as f:
            head = f.read(512)
        head.decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return False  # (a multi-byte character cut at 512 bytes: torch's load says what is wrong)
    return bool(head) and b"\x00" not in head and not head.startswith(b"PK")


@functools.lru_cache(maxsize=None)
def _allow_bytes() -> None:
    """torch.save's pickles write a bytes value (a subword model's sentencepiece file) as a call of _codecs.encode,
    which torch's weights-only loader allows from 2.5 on; torch 2.4 refused every subword checkpoint, its own
    included. Allowed here as 2.5 does (it builds bytes from a string, nothing more)."""
    allow = getattr(torch.serialization, "add_safe_globals", None)
    major_minor = tuple(int(n) for n in re.findall(r"\d+", torch.__version__)[:2])
    if allow is not None and major_minor < (2, 5):  # (later torch allows it already: its safe list stays as it is)
        allow([codecs.encode])


def _whole_beside(path: Path) -> str:
    """Words for the other checkpoint of a run (best.pt beside a damaged last.pt, or the other way) where it reads
    whole (every member's checksum), so that an error about one does not read as the run lost."""
    for name in NAMES if path.name in NAMES else ():
        other = path.with_name(name)
        if name != path.name and other.is_file():
            try:
                with zipfile.ZipFile(other) as archive:
                    if archive.testzip() is None:
                        return f"; {str(other)!r} beside it reads whole"
            except (OSError, zipfile.BadZipFile, RuntimeError, ValueError, EOFError):
                pass
    return ""


def load_checkpoint(path: Path, finite: bool = True) -> dict:
    """Load with weights_only=True; every way a file can be wrong becomes one clear CharnnError.

    Weights holding NaN or infinity are refused (they would sample garbage, score nan and train nothing)
    unless `finite` is False: `charnn info` reads such a file to say which tensors are broken.
    """
    path = Path(path)
    if not path.exists():
        raise CharnnError(f"checkpoint {str(path)!r} {missing(path)}")
    if path.is_dir():
        raise CharnnError(f"{str(path)!r} is a folder with no best.pt or last.pt in it")
    if _looks_like_text(path):
        raise CharnnError(f"{str(path)!r} is a text file, not a charnn checkpoint (a run's best.pt or last.pt, or "
                          "its folder)")
    _allow_bytes()
    try:
        with warnings.catch_warnings():  # torch warns about odd pickles; the error below says it in one line
            warnings.simplefilter("ignore")
            data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"unsupported (?:global:? )?GLOBAL (\S+)", str(e), re.IGNORECASE)  # (torch 2.4-2.13 wordings)
        if found:  # the weights-only unpickler met a reference to code or a class: it ran nothing
            raise CharnnError(f"refusing to load {str(path)!r}: it carries pickled code or objects "
                              f"({found.group(1)}), which a charnn checkpoint never does") from None
        raise CharnnError(f"{str(path)!r} is not a charnn checkpoint (corrupt, or not a file torch.save wrote)") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, AttributeError, KeyError, IndexError,
            TypeError) as e:  # (a text file read as a legacy pickle: IndexError from torch's unpickler)
        raise CharnnError(f"{str(path)!r} is not a readable charnn checkpoint (truncated or corrupt: "
                          f"{first_line(e, 120)}){_whole_beside(path)}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CharnnError(f"{str(path)!r} is a torch file but not a charnn checkpoint")
    version = data.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise CharnnError(f"{str(path)!r} has no checkpoint format version (damaged, or not written by charnn)")
    if version > VERSION:
        raise CharnnError(f"{str(path)!r} has checkpoint format version {version}, newer than this charnn "
                          f"({__version__}) reads ({VERSION}); upgrade charnn")
    for key in ("model_config", "tokenizer", "model"):
        if key not in data:
            raise CharnnError(f"{str(path)!r} is missing {key!r}; it is not a complete charnn checkpoint")
    if finite:
        broken = non_finite_tensors(data["model"])
        if broken:
            names = ", ".join(b["name"] for b in broken[:3])
            names += f" and {len(broken) - 3} more" if len(broken) > 3 else ""
            raise CharnnError(f"{str(path)!r} has weights that are NaN or infinite (in {names}), so it would only "
                              "produce garbage; use an earlier checkpoint or retrain (`charnn info` lists them)")
    return data


def non_finite_tensors(state_dict: dict) -> List[Dict]:
    """The floating-point tensors of a state_dict that hold NaN or infinity: [{name, nan, inf}], in order."""
    broken = []
    if not isinstance(state_dict, dict):
        return broken
    for name, t in state_dict.items():
        if isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex()) and not torch.isfinite(t).all():
            nan = int(torch.isnan(t).sum())
            broken.append({"name": name, "nan": nan, "inf": int(t.numel() - torch.isfinite(t).sum()) - nan})
    return broken


def build_model(config: ModelConfig):
    """A fresh model of the config's kind (charnn.models.registry), from its flags or a saved model_config."""
    return registry.build_model(config)


def is_seq2seq(data: dict) -> bool:
    return (data.get("model_config") or {}).get("kind") == "seq2seq"


SEQ2SEQ_HINT = ("is a sequence-to-sequence model (it writes an output line for each input line); use "
                "`charnn transduce CHECKPOINT [FILE...]`, and `charnn eval CHECKPOINT pairs.tsv` to score it")


def _load_model(data: dict, device):
    ModelConfig.from_saved(data["model_config"]).validate()  # the flags' checks, then the kind's own
    with torch.random.fork_rng(devices=[]):  # (the fresh weights' draws leave the caller's RNG as it was:
        model = build_model(data["model_config"])  # torch.manual_seed(0); charnn.load(run) moved it on)
    try:
        model.load_state_dict(data["model"])
    except RuntimeError as e:
        raise CharnnError(f"checkpoint weights do not fit its own model config: {weights_problem(e)}") from None
    return model.to(device).eval()


def build_from_checkpoint(data: dict, device="cpu") -> Tuple[CharRNN, object]:
    """Rebuild the language model (in eval mode, on `device`) and the tokenizer from loaded checkpoint data."""
    if is_seq2seq(data):
        raise CharnnError(f"this checkpoint {SEQ2SEQ_HINT}")
    return _load_model(data, device), checked_tokenizer(data)


def checked_tokenizer(data: dict, key: str = "tokenizer", size: str = "vocab_size"):
    """The checkpoint's tokenizer (`key`), or one CharnnError where it does not cover the model's vocabulary
    (model_config[`size`]): a hand-edited one of 2 characters for a model of 66 sampled U+FFFD without a word."""
    tok = tokenizer_from_state(data.get(key))
    want = (data.get("model_config") or {}).get(size)
    if isinstance(want, int) and want != tok.vocab_size:
        raise CharnnError(f"the checkpoint's {'input ' if key == 'source_tokenizer' else ''}tokenizer has "
                          f"{tok.vocab_size:,} tokens where its model has {want:,}: the checkpoint is damaged or "
                          "was edited")
    return tok


def build_seq2seq(data: dict, device="cpu") -> Tuple[Seq2Seq, object, object]:
    """Rebuild an encoder-decoder (eval mode, on `device`) with its (source, target) tokenizers."""
    if not is_seq2seq(data):
        what, use = (("a classifier", "classify") if (data.get("model_config") or {}).get("kind") == "classifier"
                     else ("a language model", "sample"))
        raise CharnnError(f"this checkpoint is {what}, not a sequence-to-sequence one; use `charnn {use}`, or "
                          "train one with `charnn train pairs.tsv --pairs`")
    if "source_tokenizer" not in data:
        raise CharnnError("the checkpoint is missing 'source_tokenizer'; it is not a complete charnn checkpoint")
    return (_load_model(data, device), checked_tokenizer(data, "source_tokenizer", "source_vocab"),
            checked_tokenizer(data))


MOVED_ASIDE = "a newer run of this name moved it there and stopped before its first save"


def run_checkpoints(run_dir: Path) -> List[str]:
    """The checkpoints (best.pt, last.pt) a run folder holds: a run of that name is there where any is."""
    return [n for n in NAMES if (Path(run_dir) / n).is_file()]


def moved_aside(run_dir: Path) -> Optional[str]:
    """The checkpoint (best.pt, else last.pt) of the run before this one in run_dir/previous/, where a fresh run of
    the name moved it (MOVED_ASIDE); errors about run_dir name it ("train into it first" and "start it afresh"
    hid the older run)."""
    return next((n for n in NAMES if (run_dir / PREVIOUS / n).is_file()), None)


def resolve_checkpoint(path: Optional[str], root: str = "checkpoints", use: Optional[str] = None) -> Path:
    """A .pt file, a run folder (its best.pt, else last.pt) or, with None, the newest run under `root` (that a
    command can `use`: latest_checkpoint)."""
    if path is None:
        return latest_checkpoint(root, use)
    if not str(path).strip():  # (Path("") is the current folder: charnn.load("") loaded a run there, or said
        raise CharnnError("the checkpoint path is an empty string (an unset variable?); give a .pt file or a run "
                          "folder, or leave it out for the newest run")  # "run folder '' has no best.pt")
    p = Path(path)
    if p.is_dir():
        for name in NAMES:
            if (p / name).is_file():
                return p / name
        older = moved_aside(p)
        if older:
            raise CharnnError(f"run folder {path!r} has no best.pt or last.pt, but its previous/ holds the older "
                              f"run's {older}: use {str(p / 'previous')!r} ({MOVED_ASIDE})")
        raise CharnnError(f"run folder {path!r} has no best.pt or last.pt; train into it first")
    if not p.exists():
        raise CharnnError(f"checkpoint {path!r} {missing(path)}")
    if not p.is_file():  # (a FIFO with no writer hung; <(cat best.pt) was "truncated or corrupt: Illegal seek")
        raise CharnnError(f"checkpoint {path!r} is a pipe or a device, not a file: a checkpoint is read with seeks; "
                          "save it to a file and pass that")
    return p


# what a command does with the newest run -> whether a run's config.json says its model does it
USES = {"generate": lambda kind, config: kind.generates,
        "transduce": lambda kind, config: kind.serves == "pairs",
        "classify": lambda kind, config: kind.name == "classifier" or bool(config.get("labels"))}


def latest_checkpoint(root: str = "checkpoints", use: Optional[str] = None) -> Path:
    """The best.pt (else last.pt) of the most recently written run under `root`; with `use` (USES), of the newest
    run whose model does that, where one does (a bare `charnn sample` took the newest run, a --pairs one, and
    refused it); else the newest, whose command then says what it is."""
    candidates = []
    base = Path(root)
    if base.is_dir():
        for run in base.iterdir():
            files = [run / n for n in NAMES if (run / n).is_file()]
            if files:
                newest = max(f.stat().st_mtime for f in files)
                candidates.append((newest, files[0]))
    if not candidates:
        raise CharnnError(f"no trained runs under {str(base)!r}; train one first, e.g. `charnn train` "
                          "or `charnn train your_text.txt`, or pass a checkpoint path")
    candidates.sort(key=lambda c: c[0], reverse=True)
    usable = [path for _, path in candidates if use is None or _run_does(path.parent, USES[use])]
    return (usable or [candidates[0][1]])[0]


def _run_does(run: Path, does) -> bool:
    """Whether the run's config.json says its model does what `does(kind, config)` asks; True where it cannot
    tell (no config.json, a kind this charnn lacks): the loader's own error is the answer then."""
    try:
        config = json.loads((run / "config.json").read_text(encoding="utf-8"))
        return bool(does(registry.kind_of(config.get("model") or {}), config))
    except (OSError, ValueError, AttributeError, TypeError, CharnnError):
        return True


def sweep_temp_files(folder: Path) -> None:
    """Remove temp files that a save killed mid-write left behind (never the only copy of anything)."""
    for stale in Path(folder).glob(".*.pt.*.tmp"):
        try:
            stale.unlink()
        except OSError:
            pass
