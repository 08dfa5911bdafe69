"""`charnn eval`: score text files under a checkpoint; the table (or --json) is the only thing on stdout."""

from __future__ import annotations

import functools
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Callable, List, Optional, Tuple

import typer

from charnn.cli.options import (Device, DynamicDecay, DynamicLr, Json, Quiet, ScoreLabel, Segment, Threads,
                                check_threads, dynamic_config, split_checkpoint, stdin_once)
from charnn.cli.output import err, json_line, note_threads, user_errors, visible, writing_results
from charnn.data.linefeed import STDIN


def evaluate(
    paths: Annotated[List[str], typer.Argument(help="[CHECKPOINT] FILE...: a .pt file or run folder (default: the "
                                                    "newest run), then one or more text files (or catalog "
                                                    "names, `charnn corpora`; - reads stdin).",
                                               show_default=False)],
    as_json: Json = False,
    device: Device = "auto",
    encoding: Annotated[str, typer.Option(help="Text encoding of the files.")] = "utf-8",
    dynamic: Annotated[bool, typer.Option("--dynamic", help="Also score each file by dynamic evaluation (Krause et "
                                                            "al. 2018): after scoring each segment, one gradient "
                                                            "step on it, on a copy of the weights; static and "
                                                            "dynamic side by side.")] = False,
    dynamic_lr: DynamicLr = None,
    dynamic_decay: DynamicDecay = None,
    segment: Segment = None,
    label: ScoreLabel = None,
    beam: Annotated[int, typer.Option(help="A --pairs model: decode with beam search of this width (1: greedy) "
                                           "for exact match and error rates.")] = 1,
    precision: Annotated[str, typer.Option(help="A --pairs model: decode in fp32, bf16, or auto (bf16 where "
                                                "measured faster; nats are scored in fp32).")] = "auto",
    label_by: Annotated[Optional[str], typer.Option(help="A model that classifies (--label-by, or --classifier): "
                                                         "the files are labelled text, as `train --label-by` reads "
                                                         "it (line: label<TAB>text lines; file, folder: each file "
                                                         "a text); report accuracy, macro-F1 and the confusion "
                                                         "table.", show_default=False)] = None,
    uniform_prior: Annotated[bool, typer.Option("--uniform-prior", help="With --label-by: every label equally "
                                                                        "likely before the text.")] = False,
    threads: Threads = None,
    quiet: Quiet = False,
):
    """Score text files: nats and bits per character, perplexity, characters and tokens (a labelled model:
    also under each label). A sequence-to-sequence model scores input<TAB>target files: nats per target
    character, exact match, character and symbol error rates."""
    from charnn.checkpoint import is_seq2seq, load_checkpoint, resolve_checkpoint
    from charnn.errors import ConfigError
    from charnn.data.corpus import check_text_file
    from charnn.device import resolve_device
    from charnn.sampling import TransduceConfig
    from charnn.threadwatch import measuring

    err.notes = not quiet
    with user_errors("eval"):
        dev, threads = resolve_device(device), check_threads(threads)
        note_threads(threads, quiet)
        with measuring(threads, dev):  # (the scoring loops run on measured threads: charnn.threadwatch)
            ckpt, files = split_checkpoint(paths, needs=1)
            if ckpt is None and len(files) == 1 and (files[0].endswith(".pt") or Path(files[0]).is_dir()):
                raise ConfigError(f"{files[0]!r} is a checkpoint or run folder: give the FILE to score after it "
                                  "(or `-` for stdin)")  # (it was read as the text: "looks binary", "is a directory")
            stdin_once(files)
            files, entries = _fetch(files)
            cfg = dynamic_config(dynamic, "--dynamic", dynamic_lr, dynamic_decay, segment)
            decoding = TransduceConfig(beam=beam, precision=precision).validate()  # (the flags first: a bad --beam was
            # found after reading the files)
            path = resolve_checkpoint(ckpt)
            data = load_checkpoint(path)
            labelled = label_by is not None or (data.get("model_config") or {}).get("kind") == "classifier"
            if uniform_prior and not labelled:  # (it was ignored)
                raise ConfigError("`--uniform-prior` applies to labelled files (--label-by) scored by a labelled model")
            if is_seq2seq(data):
                if dynamic or label is not None or label_by is not None:  # (--label-by was ignored)
                    raise ConfigError("`--dynamic`, `--label` and `--label-by` apply to language models, not to a "
                                      "--pairs model")
                if any(entries):
                    raise ConfigError("a catalog corpus with its own split is text, not pairs; pass pair files")
                if STDIN in files:
                    raise ConfigError("a --pairs model scores pair files (input<TAB>target lines); `-` (stdin) is read "
                                      "for a language model. Pass a file")
                return _pairs(data, path, files, decoding, encoding, dev, as_json)
            if beam != 1 or precision != "auto":
                raise ConfigError(f"`{'--beam' if beam != 1 else '--precision'}` applies to a sequence-to-sequence "
                                  "(--pairs) model's decoding")
            if labelled:
                if dynamic or label is not None or any(entries) or STDIN in files:
                    raise ConfigError("a classifier's eval reads labelled files (--label-by); `--dynamic`, `--label`, "
                                      "catalog corpora and `-` apply to language models")
                return _labelled(data, path, files, label_by, uniform_prior, encoding, dev, as_json)
            for f in (f for f, e in zip(files, entries) if e is None and f != STDIN):  # (each is read in its turn:
                check_text_file(f, "file", encoding)  # one that cannot be fails before the others are scored)
            texts = [functools.partial(_read, f, encoding) if e is None else functools.partial(_test_split, f, e)
                     for f, e in zip(files, entries)]
            results, total, per_label = _score_texts(data, texts, label, cfg if dynamic else None, dev)
    with writing_results():
        if as_json:
            out = {**total.to_dict(), "checkpoint": str(path), "files": [
                {"path": f, **r.to_dict(), **({"labels": {n: x.to_dict() for n, x in lab.items()}} if lab else {})}
                for f, r, lab in zip(files, results, per_label)]}
            if label is not None:
                out["label"] = label
            typer.echo(json_line({**out, "dynamic_config": asdict(cfg)} if dynamic else out))
            return
        rows = [row for f, r, lab in zip(files, results, per_label)
                for row in [(f, r)] + [(f"  as {n}", x) for n, x in lab.items()]]
        rows += [("total", total)] if len(files) > 1 else []
        (_dynamic_table if dynamic else _table)(rows)




def _score_texts(data: dict, texts: List[Callable[[], str]], label: Optional[str], dynamic, dev) -> tuple:
    """A language model's scores of the texts, each read when its turn comes (`texts`: what reads each), so
    memory holds one at a time: (per text, total, per text each label's) with `dynamic` (its DynamicConfig)
    static and dynamic side by side; a note on stderr for characters it lacks."""
    from charnn.checkpoint import build_from_checkpoint
    from charnn.scoring.classify import label_id
    from charnn.scoring.dynamic import combine_dynamic, evaluate_dynamic
    from charnn.scoring.evaluate import combine, evaluate_context, evaluate_labels, scoring_context

    model, tokenizer = build_from_checkpoint(data, dev)
    names = (data.get("labels") or {}).get("names") or []
    if label is not None:
        model, names = model.for_label(label_id(data.get("labels"), label)), []
    results, per_label = [], []
    for read in texts:
        text = read()
        # a labelled model: each file under each label too (the main row is the label-free path)
        per_label.append(evaluate_labels(model, tokenizer, text, dev, names) if names and dynamic is None else {})
        if dynamic is not None:
            results.append(evaluate_dynamic(model, tokenizer, text, dev, dynamic))
            continue
        context = scoring_context(tokenizer, text)
        del text  # (the ids are what scoring reads: the text's memory goes back before it)
        results.append(evaluate_context(model, tokenizer, context, dev))
        del context
    total = combine_dynamic(results) if dynamic is not None else combine(results)
    unknown = total.static.unknown if dynamic is not None else total.unknown
    if unknown:
        err.note(f"{unknown:,} character{'s are' if unknown != 1 else ' is'} not in the model's "
                  "vocabulary; scored as the unknown token")
    return results, total, per_label


def _read(path: str, encoding: str) -> str:
    """A file's text, or with `-` all of stdin (as `charnn novelty -` and `classify` read it)."""
    import sys

    from charnn.data.corpus import decode_bytes, read_text
    from charnn.errors import CharnnError

    if path != STDIN:
        return read_text(path, "file", encoding)
    if sys.stdin is None or sys.stdin.isatty():
        raise CharnnError("`-` reads the text from stdin; pipe it in: `cat notes.txt | charnn eval RUN -`")
    text = decode_bytes(sys.stdin.buffer.read(), "the text on stdin", encoding)
    if not text:
        raise CharnnError("the text on stdin is empty")
    return text


def _fetch(files: List[str]) -> Tuple[List[str], List[Optional[dict]]]:
    """Files as given, a catalog name (`charnn corpora`) as its local copy, downloaded on first use; beside
    each, its catalog entry when it has its own encoding or split (else None). `-` (stdin) stays as it is."""
    from charnn.cli.progress import DownloadBar
    from charnn.data.catalog import own_layout, resolve_entry

    bar = DownloadBar(err)
    try:
        found = [(f, None) if f == STDIN else resolve_entry(f, lambda kind, info: bar(info) if kind == "download"
                                                            else None) for f in files]
    finally:
        bar.close()
    return [p for p, _ in found], [e if e and own_layout(e) else None for _, e in found]


def _test_split(path: str, entry: dict) -> str:
    """A catalog corpus with its own split (enwik8, text8: 90M train / 5M val / 5M test) is scored on its test
    split, the part after train and val, read in its own encoding; a note says so."""
    from charnn.data.corpus import read_text

    text = read_text(path, "file", entry.get("encoding") or "utf-8")
    split = entry.get("split")
    if split:
        start = split["train"] + split["val"]
        text = text[start:]
        err.note(f"{entry['name']}: scoring its test split, characters {start:,} to {start + len(text):,} "
                  f"(train and val are the {split['train']:,} and {split['val']:,} before)")
    return text


def _labelled(data, path, files, by: Optional[str], uniform_prior: bool, encoding: str, dev, as_json: bool) -> None:
    """A model that classifies, over labelled files: accuracy, macro-F1 and the confusion table."""
    from charnn.checkpoint import build_from_checkpoint
    from charnn.data.labels import load_eval_texts
    from charnn.errors import ConfigError
    from charnn.scoring.classify import classifier_for
    from charnn.scoring.confusion import confusion_lines, label_report

    if by is None:
        raise ConfigError("a classifier is tested on labelled text: add `--label-by line|file|folder` (how the "
                          "files are labelled, as for `charnn train`)")
    model, tokenizer = build_from_checkpoint(data, dev)
    clf = classifier_for(model, tokenizer, data.get("labels"), dev, uniform_prior)
    texts, truth = load_eval_texts(files, by, clf.names, encoding)
    pred = [clf.names.index(s.best) for s in clf.classify(texts)]
    report = label_report(truth, pred, clf.names)
    with writing_results():
        if as_json:
            typer.echo(json_line({**report, "checkpoint": str(path), "label_by": by}))
            return
        shown = [visible(n) for n in report["names"]]  # (escaped before the columns are padded)
        for line in confusion_lines({**report, "names": shown, "labels": dict(zip(shown, report["labels"].values()))}):
            typer.echo(line)


def _pairs(data, path, files, cfg, encoding: str, dev, as_json: bool) -> None:
    """A sequence-to-sequence model over files of pairs: one row per file (and a total)."""
    from charnn.checkpoint import build_seq2seq
    from charnn.data.pairs import read_pairs
    from charnn.errors import CharnnError
    from charnn.reports.pairs import score_files, total, unknown_chars

    model, source_tok, tok = build_seq2seq(data, dev)
    pair_files = [read_pairs(f, encoding, hint="fix or remove it") for f in files]
    for f in pair_files:  # (a row of dashes and exit 0 was the answer)
        if not f.pairs:
            raise CharnnError(f"{f.path!r} holds no input<TAB>target lines to score")
    scores, decoded_in = score_files(model, source_tok, tok, pair_files, cfg, dev,
                                     (data.get("pairs") or {}).get("max_ratio", 4.0))
    if decoded_in is not None and decoded_in.how == "measured":  # (once a model: then remembered, as transduce says)
        err.note(f"decoded in {decoded_in.precision} ({decoded_in.reason}; remembered for this model on this "
                 "machine; --precision fp32|bf16 chooses)")
    unknown = unknown_chars(source_tok, pair_files)
    if unknown:
        err.note(f"{unknown:,} input characters are not in the model's vocabulary; they are scored as the "
                  "unknown token and dropped when decoding")
    unknown = unknown_chars(tok, pair_files, "target")
    if unknown:  # (said for inputs only: the targets' could not be written, so no output can match them)
        err.note(f"{unknown:,} target characters are not in the model's output vocabulary; they are scored "
                  "as the unknown token, and no output can match them")
    all_ = total(scores)
    with writing_results():
        if as_json:
            typer.echo(json_line({**all_.to_dict(), "checkpoint": str(path), "beam": cfg.beam,
                                   "precision": decoded_in.precision if decoded_in else None,
                                   "files": [{"path": f, **s.to_dict()} for f, s in zip(files, scores)]}))
            return
        rows = list(zip(files, scores)) + ([("total", all_)] if len(files) > 1 else [])
        pct = lambda v: "-" if v is None else f"{100 * v:.2f}%"  # noqa: E731
        w = _file_width(rows)
        typer.echo(f"{'file':<{w}} {'pairs':>8} {'words':>8} {'nats/char':>10} {'exact':>8} {'CER':>8} {'SER':>8}")
        for f, s in rows:
            d = s.to_dict()
            nats = "-" if d["nats_per_char"] is None else f"{d['nats_per_char']:.4f}"
            typer.echo(f"{visible(f):<{w}} {d['pairs']:>8,} {d['words']:>8,} {nats:>10} {pct(d['exact_match']):>8} "
                       f"{pct(d['cer']):>8} {pct(d['ser']):>8}")


def _file_width(rows) -> int:
    """The file column: wide enough for the longest name (a cached catalog file's path runs past 30)."""
    return max([30] + [len(visible(str(f))) for f, _ in rows])


def _table(rows) -> None:
    w = _file_width(rows)
    typer.echo(f"{'file':<{w}} {'nats/char':>10} {'bits/char':>10} {'perplexity':>11} {'chars':>10} {'tokens':>10}")
    for f, r in rows:
        typer.echo(f"{visible(f):<{w}} {r.nats_per_char:>10.4f} {r.bits_per_char:>10.4f} {r.perplexity:>11.3f} "
                   f"{r.chars:>10,} {r.tokens:>10,}")


def _dynamic_table(rows) -> None:
    """Static and dynamic nats/char side by side, the gain, and the seconds each pass took."""
    w = _file_width(rows)
    typer.echo(f"{'file':<{w}} {'static':>10} {'dynamic':>10} {'gain':>8} {'chars':>10} {'static s':>9} "
               f"{'dynamic s':>10}")
    for f, r in rows:
        typer.echo(f"{visible(f):<{w}} {r.static.nats_per_char:>10.4f} {r.dynamic.nats_per_char:>10.4f} {r.gain:>8.4f} "
                   f"{r.static.chars:>10,} {r.static_seconds:>9.2f} {r.dynamic_seconds:>10.2f}")
