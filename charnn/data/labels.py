"""Labelled corpora (`--label-by file|folder|line`): documents with a label each, split and encoded with a
label id per token.

- file: each CORPUS file is a label, named by its stem (files of a CORPUS folder too);
- folder: each subfolder of a CORPUS folder is a label, holding the files under it;
- line: each line is `label<TAB>text`, its own document (names, titles, verses, messages).

The split keeps every label on both sides: a file or folder label's validation text is the last `val_frac`
of that label's characters; lines are held out at random (seeded), a `val_frac` of them. Labelled corpora
are read into memory (they are usually small; an unlabelled corpus streams).

Label id 0 means "no label" (the model's unconditional path); labels are 1..N in the order of `names`.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from charnn.data import corpus as plain
from charnn.data.sources import find_files
from charnn.errors import TERMINAL_CONTROL, CharnnError, ConfigError

LABEL_BY = ("file", "folder", "line")
SEPARATOR = "\n"  # ends every document: the next one starts as a text with nothing before it does


@dataclass
class Document:
    label: int  # 1..N
    text: str


PER_LABEL = "per-label"  # line labels: each label's own share held out (LabelledText.split)


@dataclass
class LabelledText:
    by: str
    names: List[str]  # label i + 1 is names[i]
    docs: List[Document]  # everything read: a document per label (file, folder) or per line
    source: str  # the corpus arguments, for messages and the checkpoint
    skipped_lines: int = 0
    name: str = "run"  # the default run name: the first CORPUS argument's stem
    val_docs: Optional[List[Document]] = None  # --val-file's lines (then every doc trains)
    train: List[Document] = field(default_factory=list)  # set by split()
    val: List[Document] = field(default_factory=list)
    line_split: str = PER_LABEL  # how line labels were split (LINE_SPLITS)

    def split(self, val_frac: float, seed: int, line_split: str = PER_LABEL) -> "LabelledText":
        """The same text with its train and validation documents: the tail of every file or folder label, a
        seeded random share of each label's lines (`line_split` "random": of all the lines, as runs recorded
        before 2026-12-06 were split), or --val-file's lines. Training splits with the run's own settings (a
        resumed run's saved ones), so the split never depends on flags typed later."""
        if self.val_docs is not None:
            train, val = list(self.docs), list(self.val_docs)
        elif self.by == "line":
            train, val = LINE_SPLITS[line_split](self.docs, val_frac, seed)
        else:
            train, val = _split_tails(self.docs, self.names, val_frac)
        return replace(self, train=train, val=val, line_split=line_split)

    @property
    def held_out(self):
        """The --val-file's part (None where the text was read without one)."""
        return self.val_docs

    def with_val_file(self, path: str, encoding: str = "utf-8", skip_bad_lines: bool = False) -> "LabelledText":
        """The same text validated on `path`'s label<TAB>text lines (a resumed run's saved --val-file, not given
        again: the text was read without it)."""
        val_docs, _, bad = _lines(find_files([path], encoding=encoding), encoding, skip_bad_lines, self.names)
        return replace(self, val_docs=val_docs, skipped_lines=self.skipped_lines + bad)

    def counts(self, docs: Sequence[Document]) -> Dict[str, Dict[str, int]]:
        """{name: {"docs": n, "chars": n}} over `docs`."""
        out = {name: {"docs": 0, "chars": 0} for name in self.names}
        for d in docs:
            c = out[self.names[d.label - 1]]
            c["docs"] += 1
            c["chars"] += len(d.text)
        return out

    def record(self) -> dict:
        """What the checkpoint keeps: how labels were made, their names and training sizes."""
        train = self.counts(self.train)
        return {"by": self.by, "names": list(self.names), "train_docs": [train[n]["docs"] for n in self.names],
                "train_chars": [train[n]["chars"] for n in self.names], "line_split": self.line_split}


def load_labelled(paths: Sequence[str], by: str, encoding: str = "utf-8", glob: Optional[str] = None,
                  val_frac: float = 0.1, seed: int = 1337, val_file: Optional[str] = None,
                  skip_bad_lines: bool = False, on_skip: Optional[Callable[[str, str], None]] = None) -> LabelledText:
    if by not in LABEL_BY:
        raise ConfigError(f"`--label-by` must be one of {', '.join(LABEL_BY)}, not {by!r}")
    if not paths:
        raise ConfigError("`--label-by` needs CORPUS files or folders (the built-in corpus has no labels)")
    if val_file is not None and by != "line":
        raise ConfigError("`--val-file` with labels works for `--label-by line` (a file of label<TAB>text lines); "
                          "file and folder labels hold out the last --val-frac of each label's text")
    source, name = " ".join(paths), plain.lines_run_name(paths[0])
    if by == "line":
        docs, names, bad = _lines(find_files(paths, glob, on_skip, encoding), encoding, skip_bad_lines)
        val_docs = None
        if val_file is not None:
            val_docs, _, bad_val = _lines(find_files([val_file], encoding=encoding), encoding, skip_bad_lines,
                                          names)
            bad += bad_val
        return LabelledText(by, names, docs, source, bad, name, val_docs).split(val_frac, seed)
    groups = _groups(paths, by, glob, on_skip, encoding=encoding)
    names = sorted(groups)
    docs = [Document(i, SEPARATOR.join(_read(f, encoding).rstrip("\n") for f in groups[label]) + "\n")
            for i, label in enumerate(names, 1)]
    return LabelledText(by, names, docs, source, name=name).split(val_frac, seed)


def _split_tails(docs: List[Document], names: List[str], val_frac: float) -> Tuple[List[Document], List[Document]]:
    """Each label's text (one document) cut in two: its last `val_frac` is validation."""
    train, val = [], []
    for d in docs:
        cut = int(len(d.text) * (1.0 - val_frac))
        if cut < 1 or len(d.text) - cut < 2:  # (the count said one more: the closing newline)
            need = next(n for n in range(2, 1 << 20) if 1 <= int(n * (1.0 - val_frac)) <= n - 2)
            raise CharnnError(f"label {names[d.label - 1]!r} has {len(d.text) - 1:,} characters; holding out "
                              f"--val-frac {val_frac} for validation needs at least {need - 1:,} (add text, or raise "
                              "--val-frac)")
        train.append(Document(d.label, d.text[:cut]))
        val.append(Document(d.label, d.text[cut:]))
    return train, val


def _groups(paths: Sequence[str], by: str, glob: Optional[str], on_skip, least: int = 2,
            encoding: str = "utf-8") -> Dict[str, List[Path]]:
    """{label name: its files}: by file stem, or by the subfolder of a CORPUS folder they are under (at least
    `least` labels)."""
    groups: Dict[str, List[Path]] = {}
    for arg in paths:
        root = Path(arg)
        for f in find_files([arg], glob, on_skip, encoding):
            name = f.path.stem if by == "file" else _folder_label(root, arg, f.path)
            if by == "file" and name in groups:  # (two files, one stem: one label would silently hold both)
                raise CharnnError(f"--label-by file: {str(groups[name][0])!r} and {str(f.path)!r} would both be "
                                  f"label {name!r}; rename one, or put each label's files in a subfolder of its "
                                  "own and use --label-by folder")
            if TERMINAL_CONTROL.search(name):  # (a tab in a name split classify's tab-separated answers)
                raise CharnnError(f"--label-by {by}: the label {name!r} ({str(f.path)!r}) has a tab or another "
                                  "control character; rename it")
            groups.setdefault(name, []).append(f.path)
    if len(groups) < least:
        what = "files" if by == "file" else "subfolders"
        raise CharnnError(f"--label-by {by} found {len(groups)} label ({what}: {', '.join(groups) or 'none'}); "
                          "labels need at least 2")
    return groups


def _folder_label(root: Path, arg: str, path: Path) -> str:
    """The subfolder of CORPUS folder `root` that `path` is under."""
    if not root.is_dir():
        raise ConfigError(f"--label-by folder takes folders whose subfolders are the labels; {arg!r} is a file")
    rel = path.relative_to(root).parts
    if len(rel) < 2:
        raise CharnnError(f"--label-by folder: {str(path)!r} is not inside a subfolder of {arg!r}, so it has no "
                          "label; move it into one, or use --glob to leave it out")
    return rel[0]


def _read(path: Path, encoding: str) -> str:
    """A labelled file's text, CRLF line ends read as LF (an empty file is just no text)."""
    return plain.read_text(str(path), "corpus file", encoding, allow_empty=True).replace("\r\n", "\n")


TRAIN_HINT = "`--skip-bad-lines` skips and counts such lines"


def _lines(files, encoding: str, skip_bad: bool, names: Optional[List[str]] = None,
           hint: str = TRAIN_HINT) -> Tuple[List[Document], List[str], int]:
    """Documents of `label<TAB>text` lines (blank lines skipped); with `names`, only those labels. `hint`: how a
    bad line can be dealt with, in its error."""
    index = {n: i for i, n in enumerate(names or [])}
    fixed = names is not None
    raw: List[Tuple[str, str]] = []
    bad = 0
    for f in files:
        for no, line in enumerate(_read(f.path, encoding).split("\n"), 1):
            if not line.strip():
                continue
            label, tab, text = line.partition("\t")
            if not (fixed and label in index):  # ("english \t..." made a label of its own beside "english")
                label = label.strip()
            problem = ("has no tab between label and text" if not tab else "has an empty label" if not label.strip()
                       else f"has label {label!r}, which the model was not trained on" if fixed and label not in index
                       else f"has a control character in its label {label!r}" if not fixed and
                       TERMINAL_CONTROL.search(label) else None)  # (an ESC in a label: tables cleared the screen)
            if problem:
                if skip_bad:
                    bad += 1
                    continue
                raise CharnnError(f"{f.path}:{no}: the line {problem} (lines are label<TAB>text; {hint})")
            raw.append((label, text))
    if not raw:
        raise CharnnError("the labelled corpus has no label<TAB>text lines")
    if not fixed:
        names = sorted({label for label, _ in raw})
        index = {n: i for i, n in enumerate(names)}
        if len(names) < 2:
            cr = any("\r" in text for _, text in raw)  # (a file of old Mac line ends reads as one line)
            raise CharnnError(f"--label-by line found one label ({names[0]!r}); labels need at least 2" +
                              ("; its lines end in CR alone (a line ends at LF): convert them" if cr else ""))
    return [Document(index[label] + 1, text + "\n") for label, text in raw], list(names), bad


def _split_lines(docs: List[Document], val_frac: float, seed: int) -> Tuple[List[Document], List[Document]]:
    """A seeded random `val_frac` of each label's lines held out, every label keeping at least one line for
    training (a random share of all the lines could take a rare label's only lines: it trained on nothing); both
    sides keep the file's order."""
    rng, held = random.Random(seed), set()
    by_label: Dict[int, List[int]] = {}
    for i, d in enumerate(docs):
        by_label.setdefault(d.label, []).append(i)
    for label in sorted(by_label):
        lines = by_label[label]
        held.update(rng.sample(lines, min(len(lines) - 1, int(round(len(lines) * val_frac)))))
    if not held:
        raise CharnnError(f"{len(docs)} labelled lines are too few to hold out --val-frac {val_frac} of them (each "
                          "label keeps a line for training)")
    return [d for i, d in enumerate(docs) if i not in held], [d for i, d in enumerate(docs) if i in held]


def _split_lines_at_random(docs: List[Document], val_frac: float, seed: int) -> Tuple[List[Document], List[Document]]:
    """A seeded random `val_frac` of all the lines, at least one, held out (runs recorded before the split kept
    every label a training line: their resumes read the same split)."""
    n_val = max(1, int(round(len(docs) * val_frac)))
    if n_val >= len(docs):
        raise CharnnError(f"{len(docs)} labelled lines are too few to hold out --val-frac {val_frac} of them")
    held = set(random.Random(seed).sample(range(len(docs)), n_val))
    return [d for i, d in enumerate(docs) if i not in held], [d for i, d in enumerate(docs) if i in held]


LINE_SPLITS = {PER_LABEL: _split_lines, "random": _split_lines_at_random}


def line_split_of(resumed: Optional[dict]) -> str:
    """How a run's line labels are split: a resumed run's recorded way (none recorded: the old random one)."""
    if not resumed:
        return PER_LABEL
    return (resumed.get("labels") or {}).get("line_split", "random")


@dataclass
class EncodedLabels:
    ids: np.ndarray  # int64 token ids of the documents, one after another
    labels: np.ndarray  # the label of each token's document (uint8/uint16), same length
    chars: int
    per_label_chars: List[int] = field(default_factory=list)
    lengths: List[int] = field(default_factory=list)  # tokens of each document, in order


def encode_documents(docs: Sequence[Document], tokenizer, n_labels: int) -> EncodedLabels:
    """Each document's ids (it ends with a newline, so the next starts after one, as a text with nothing
    before it does), and the label of every token."""
    ids, labels = [], []
    per = [0] * n_labels
    dtype = np.uint8 if n_labels < 256 else np.int32  # torch takes both
    for d in docs:
        x = tokenizer.encode(d.text)
        ids.append(x)
        labels.append(np.full(len(x), d.label, dtype=dtype))
        per[d.label - 1] += len(d.text)
    cat = (lambda parts, dt: np.concatenate(parts) if parts else np.zeros(0, dtype=dt))
    return EncodedLabels(cat(ids, np.int64), cat(labels, dtype), sum(per), per, [len(x) for x in ids])


def prepare_labelled(text: LabelledText, kind: str = "char", vocab_size: Optional[int] = None,
                     tokenizer_state: Optional[dict] = None, extend: bool = False, on_event=None,
                     threads: Optional[int] = None):
    """Train and validation ids with a label per token (encode.Prepared with train_labels/val_labels): the
    tokenizer is built on the training documents, or taken from a checkpoint (extended, when fine-tuning a
    character model, by the characters the training documents add)."""
    import torch

    from charnn.data.encode import Prepared
    from charnn.text.tokenizer import CharTokenizer, build_tokenizer, tokenizer_from_state

    train_text = "".join(d.text for d in text.train)
    if tokenizer_state is None:
        tok = build_tokenizer(train_text, kind, vocab_size, on_event, threads)
    else:
        tok = tokenizer_from_state(tokenizer_state)
        if extend and tok.kind == "char":
            new = sorted(set(tok.unknown(train_text)))
            tok = CharTokenizer(tok.chars + new, ordered=True)
    n = len(text.names)
    train, val = encode_documents(text.train, tok, n), encode_documents(text.val, tok, n)
    if len(val.ids) < 2:
        raise CharnnError("the validation documents hold fewer than 2 tokens; raise --val-frac")
    return Prepared(tok, torch.from_numpy(train.ids), val.ids, train.chars, val.chars,
                    int((val.ids == tok.unk_id).sum()), False, None, [],
                    train_labels=torch.from_numpy(train.labels), val_labels=val.labels,
                    val_label_chars=val.per_label_chars,
                    # line documents train and score each alone (data.batches.DocumentBatches); the long
                    # documents of file and folder labels stream, their state carried as any corpus's
                    train_doc_lengths=train.lengths if text.by == "line" else None,
                    val_doc_lengths=val.lengths if text.by == "line" else None)


def log_prior(labels: dict, uniform: bool = False) -> np.ndarray:
    """log p(label): uniform, or the training frequencies (documents for line labels, else characters)."""
    n = len(labels["names"])
    if uniform:
        return np.full(n, -math.log(n))
    counts = np.asarray(labels["train_docs"] if labels.get("by") == "line" else labels["train_chars"], dtype=float)
    counts = np.maximum(counts, 1e-9)
    return np.log(counts / counts.sum())


def load_eval_texts(paths: Sequence[str], by: str, names: List[str], encoding: str = "utf-8"
                    ) -> Tuple[List[str], List[int]]:
    """Labelled texts to test a model that classifies (`charnn eval --label-by`), with the model's label names:
    (texts, label indices 0..N-1). A line (label<TAB>text) is a text; with file and folder labels, each file is
    one. A label the model does not have is an error."""
    if by not in LABEL_BY:
        raise ConfigError(f"`--label-by` must be one of {', '.join(LABEL_BY)}, not {by!r}")
    if by == "line":
        docs, _, _ = _lines(find_files(paths, encoding=encoding), encoding, False, names,
                            f"the model's labels: {', '.join(names[:10])}{' ...' if len(names) > 10 else ''}")
        return [d.text.rstrip("\n") for d in docs], [d.label - 1 for d in docs]
    texts, truth = [], []
    for name, files in sorted(_groups(paths, by, None, None, least=1, encoding=encoding).items()):
        if name not in names:
            raise CharnnError(f"--label-by {by}: {name!r} is not one of the model's labels ({', '.join(names)})")
        texts += [_read(f, encoding) for f in files]
        truth += [names.index(name)] * len(files)
    return texts, truth
