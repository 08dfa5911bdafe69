"""What a training run reads, and the typed options that shape it: a plain Corpus, labelled documents
(--label-by) or input<TAB>target pairs (--pairs), split by --val-frac/--val-file and the seed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from charnn.config import TrainConfig


@dataclass(frozen=True)
class TextOptions:
    """The part of a training config that the data modules read (charnn.config.TrainConfig has them all)."""

    val_frac: float = 0.1  # the last fraction held out for validation
    val_file: Optional[str] = None  # validate on this file (or catalog name) instead
    seed: int = 1337  # which lines a line-split validation takes
    skip_bad_lines: bool = False  # --label-by line / --pairs: skip lines that are not label<TAB>text
    label_by: Optional[str] = None  # file, folder or line: labelled documents
    pairs: bool = False  # input<TAB>target lines
    tokenizer: str = "char"  # char, bpe or unigram
    vocab_size: Optional[int] = None  # bpe/unigram vocabulary
    threads: Optional[int] = None  # sentencepiece training threads (None: torch's)

    @classmethod
    def of(cls, cfg: TrainConfig) -> "TextOptions":
        return cls(val_frac=cfg.val_frac, val_file=cfg.val_file, seed=cfg.seed, skip_bad_lines=cfg.skip_bad_lines,
                   label_by=cfg.label_by, pairs=cfg.pairs, tokenizer=cfg.tokenizer, vocab_size=cfg.vocab_size,
                   threads=cfg.threads)


def run_names(paths, options: TextOptions) -> List[str]:
    """The default names a run on these CORPUS arguments may have, without reading or downloading anything: the
    name under `options` first, then under the other way of reading text (a plain corpus and --pairs/--label-by
    name a linked file or a catalog name's run differently). --resume looks for the run under each."""
    from charnn.data import catalog
    from charnn.data import corpus as plain

    paths = plain.corpus_paths(paths)
    if paths is None:
        return [plain.BUILTIN_NAME]
    first = paths[0]
    if Path(first).exists():
        names = [plain.plain_run_name(Path(first)), plain.lines_run_name(first)]
    else:
        entry = catalog.find(first)
        names = [] if entry is None else [entry["name"], plain.lines_run_name(catalog.local_path(entry))]
    if options.label_by or options.pairs:
        names.reverse()
    return list(dict.fromkeys(names))


def load_training_text(paths, encoding: str = "utf-8", glob: Optional[str] = None, on_event=None,
                       options: Optional[TextOptions] = None):
    """A plain Corpus (charnn.data.corpus.load_corpus), with `options.label_by` a LabelledText
    (charnn.data.labels), or with `options.pairs` a PairText (charnn.data.pairs)."""
    from charnn.data import corpus as plain

    paths = plain.corpus_paths(paths)
    if options is None or not (options.label_by or options.pairs):
        return plain.load_corpus(paths, encoding, glob, on_event)
    from charnn.data.catalog import resolve

    paths = [resolve(p, on_event) for p in paths or []]
    val_file = None if options.val_file is None else resolve(options.val_file, on_event)
    on_skip = None if on_event is None else (lambda path, why: on_event("corpus_skip", {"path": path, "why": why}))
    o = options
    if o.pairs:
        from charnn.data.pairs import load_pairs

        return load_pairs(paths, encoding, glob, o.val_frac, o.seed, val_file, o.skip_bad_lines, on_skip)
    from charnn.data.labels import load_labelled

    return load_labelled(paths, o.label_by, encoding, glob, o.val_frac, o.seed, val_file, o.skip_bad_lines, on_skip)
