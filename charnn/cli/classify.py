"""`charnn classify`: the most likely label of each input line (or file), in order, one output line each."""

from __future__ import annotations

import json
import queue
import sys
import threading
from typing import Annotated, Iterator, List, Optional

import typer

from charnn.cli.options import Device, Quiet, Threads, check_threads, split_checkpoint, stdin_once
from charnn.cli.output import err, note_threads, user_errors, visible, writing_results
from charnn.data.linefeed import STDIN, stdin_lines
from charnn.errors import CharnnError

BLOCK = 512  # lines scored together when they are already there (never waiting for more); similar lengths share a pass


def classify(
    paths: Annotated[Optional[List[str]], typer.Argument(
        help="[CHECKPOINT] [FILE...]: a .pt file or run folder (default: the newest run), then text files "
             "(default: stdin).", show_default=False)] = None,
    probs: Annotated[bool, typer.Option("--probs", help="Add the label's probability: label<TAB>p.")] = False,
    top: Annotated[Optional[int], typer.Option(min=1, help="The N most likely labels, with probabilities, "
                                                           "tab-separated.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object per text, a line each (JSON "
                                                        "Lines).")] = False,
    per_file: Annotated[bool, typer.Option("--per-file", help="One result per FILE (its whole text), prefixed "
                                                              "by its path (--json: a \"file\" key).")] = False,
    uniform_prior: Annotated[bool, typer.Option("--uniform-prior", help="Every label equally likely before "
                                                                        "the text (default: the training "
                                                                        "label frequencies).")] = False,
    device: Device = "auto",
    encoding: Annotated[str, typer.Option(help="Text encoding of the input.")] = "utf-8",
    threads: Threads = None,
    quiet: Quiet = False,
):
    """Say which label each line most likely came from (a model trained with --label-by: a label-conditioned
    language model, by Bayes' rule, or a --classifier)."""
    from charnn.checkpoint import build_from_checkpoint, load_checkpoint, resolve_checkpoint
    from charnn.scoring.classify import classifier_for
    from charnn.data.corpus import read_text
    from charnn.device import resolve_device
    from charnn.threadwatch import measuring

    err.notes = not quiet
    with user_errors():
        ckpt, paths = split_checkpoint(paths)  # (a mistyped run folder: said, as the other commands say it)
        stdin_once(paths)
        if per_file and not paths:
            raise typer.BadParameter("--per-file needs FILE arguments")
        dev, threads = resolve_device(device), check_threads(threads)
        note_threads(threads, quiet)
        data = load_checkpoint(resolve_checkpoint(ckpt, use="classify"))
        model, tokenizer = build_from_checkpoint(data, dev)
        classifier = classifier_for(model, tokenizer, data.get("labels"), dev, uniform_prior)
        if per_file:
            texts = ["".join(stdin_lines(encoding)) if p == STDIN else read_text(p, "file", encoding, allow_empty=True)
                     for p in paths]
            for path, text in zip(paths, texts):
                if not text:  # (its answer is the model's for no text at all: a prior's)
                    err.note(f"{'stdin' if path == STDIN else path} is empty: its answer is for no text at all")
    show = _formatter(probs, top, as_json)
    unknown = 0  # characters the model's vocabulary lacks (scored as its unknown token: said, as eval says it)
    with writing_results(), measuring(threads, dev):  # (blocks of texts on measured threads: charnn.threadwatch)
        if per_file:
            unknown = sum(tokenizer.count_unknown(text) for text in texts)
            for path, scores in zip(paths, classifier.classify(texts)):
                typer.echo(json.dumps({"file": path, **scores.to_dict()}, ensure_ascii=False) if as_json
                           else f"{visible(path)}\t{show(scores)}")
        else:
            with user_errors():
                for block in _blocks(_lines(paths, encoding)):
                    unknown += sum(tokenizer.count_unknown(line) for line in block)
                    for scores in classifier.classify(block):
                        sys.stdout.write(show(scores) + "\n")
                    sys.stdout.flush()
    if unknown:
        err.note(f"{unknown:,} character{'s are' if unknown != 1 else ' is'} not in the model's vocabulary; scored "
                 "as the unknown token")


def _formatter(probs: bool, top: Optional[int], as_json: bool):
    if as_json:
        return lambda s: json.dumps(s.to_dict(), ensure_ascii=False)
    if top:  # (a label's control characters as escapes: an older model's labels could hold them)
        return lambda s: "\t".join(f"{visible(name)}\t{p:.4f}" for name, p in s.top(top))
    if probs:
        return lambda s: f"{visible(s.best)}\t{s.top(1)[0][1]:.4f}"
    return lambda s: visible(s.best)


def _lines(paths: List[str], encoding: str) -> Iterator[str]:
    """The input's lines without their line ends: each FILE in turn, or stdin."""
    from charnn.data.corpus import read_text

    for p in paths or [STDIN]:
        if p == STDIN:
            yield from (line.rstrip("\r\n") for line in stdin_lines(encoding))  # (CRLF as training read it)
            continue
        text = read_text(p, "file", encoding, allow_empty=True).replace("\r\n", "\n")
        if text:  # an empty file has no lines, so no answers (as an empty stdin)
            yield from text.split("\n")[:-1] if text.endswith("\n") else text.split("\n")


def _blocks(lines: Iterator[str]) -> Iterator[List[str]]:
    """Lists of lines: each as many as have arrived (up to BLOCK), so a slow writer gets each answer at
    once and a fast one gets them scored together. A reader thread fills the queue."""
    q: "queue.Queue" = queue.Queue(maxsize=4 * BLOCK)
    end = object()

    def read():
        try:
            for line in lines:
                q.put(line)
        except UnicodeError as e:  # handed to the main thread, raised in order, as one line
            q.put(CharnnError(f"the input is not valid text in its encoding: {getattr(e, 'reason', e)}"))
        except BaseException as e:
            q.put(e)
        q.put(end)

    threading.Thread(target=read, daemon=True).start()
    while True:
        block = [q.get()]
        while len(block) < BLOCK and not q.empty():
            block.append(q.get())
        items = [x for x in block if isinstance(x, str)]
        if items:
            yield items
        for x in block:
            if x is end:
                return
            if isinstance(x, BaseException):
                raise x
