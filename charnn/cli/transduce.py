"""`charnn transduce`: input lines (files or stdin) -> one output line each, in order, on stdout."""

from __future__ import annotations

import sys
from typing import Annotated, List, Optional

import typer

from charnn.cli.options import DecodePrecision, Device, Quiet, Threads, check_threads, split_checkpoint, stdin_once
from charnn.cli.output import err, note_threads, user_errors, writing_results
from charnn.sampling import DECODE_BATCH, TransduceConfig


def transduce(
    args: Annotated[Optional[List[str]], typer.Argument(help="[CHECKPOINT] [FILE...]: a sequence-to-sequence .pt "
                                                             "file or run folder (`charnn train pairs.tsv "
                                                             "--pairs`; default: the newest run), then files of "
                                                             "input lines (default: stdin).",
                                                        show_default=False)] = None,
    beam: Annotated[int, typer.Option(help="Beam search with this many hypotheses per input (1: greedy).")] = 1,
    n_best: Annotated[int, typer.Option(help="Print the N best outputs per input, tab-separated (at most --beam; "
                                             "with --temp, N samples).")] = 1,
    scores: Annotated[bool, typer.Option("--scores", help="Follow each output with its log-probability "
                                                          "(tab-separated).")] = False,
    length_penalty: Annotated[float, typer.Option(help="Beam search: divide scores by ((5 + length) / 6) ** A "
                                                       "(0: plain log-probability; about 0.6 favours longer "
                                                       "outputs).")] = 0.0,
    temp: Annotated[Optional[float], typer.Option("--temp", "--temperature", help="Sample varied outputs at this "
                                                                                  "temperature instead of searching "
                                                                                  "(0: greedy, no sampling).",
                                                  show_default=False)] = None,
    top_k: Annotated[Optional[int], typer.Option(help="Sample from the K most likely characters.",
                                                 show_default=False)] = None,
    top_p: Annotated[Optional[float], typer.Option(help="Sample from the most likely characters whose probabilities "
                                                        "add up to P.", show_default=False)] = None,
    seed: Annotated[Optional[int], typer.Option(help="Sampling seed (default 0: the same input gives the same "
                                                     "samples).", show_default=False)] = None,
    max_length: Annotated[Optional[int], typer.Option(help="Output characters per line at most (default: twice the "
                                                           "longest target/input ratio seen in training, times the "
                                                           "input's length, plus 10).", show_default=False)] = None,
    batch_size: Annotated[int, typer.Option(help="Inputs decoded together, sorted by length (the output keeps "
                                                 "the input's order).")] = DECODE_BATCH,
    unknown: Annotated[str, typer.Option(help="Input characters the model does not know: error, or skip "
                                              "(drop them).")] = "error",
    encoding: Annotated[str, typer.Option(help="Text encoding of the input.")] = "utf-8",
    device: Device = "auto",
    precision: DecodePrecision = "auto",
    threads: Threads = None,
    quiet: Quiet = False,
):
    """Write an output line for every input line with a sequence-to-sequence model (in order; a blank input
    gives a blank output)."""
    from charnn.checkpoint import build_seq2seq, load_checkpoint, resolve_checkpoint
    from charnn.data.linefeed import LineFeed
    from charnn.data.sources import check_encoding
    from charnn.device import resolve_device
    from charnn.generation.seq2seq import Transducer, join_line
    from charnn.threadwatch import measuring

    with user_errors("transduce"):
        checkpoint, files = split_checkpoint(args)
        stdin_once(files)
        encoding = check_encoding(encoding)  # (an unknown one: a traceback from the first read, or nothing on stdin)
        cfg = TransduceConfig(beam=beam, n_best=n_best, length_penalty=length_penalty, temperature=temp, top_k=top_k,
                              top_p=top_p, seed=seed, max_length=max_length, batch_size=batch_size, unknown=unknown,
                              device=device, precision=precision).validate()
        dev, threads = resolve_device(cfg.device), check_threads(threads)
        note_threads(threads, quiet)
        path = resolve_checkpoint(checkpoint, use="transduce")
        data = load_checkpoint(path)
        model, source_tok, tok = build_seq2seq(data, dev)
        pairs = data.get("pairs") or {}
        transducer = Transducer(model, source_tok, tok, cfg, dev, pairs.get("max_ratio", 4.0), exact_scores=scores,
                                max_source=pairs.get("max_source"))
        if not files and sys.stdin.isatty() and not quiet:
            err.print("reading input lines from the terminal (Ctrl-D ends)")
        feed = LineFeed(files or [], encoding, most=max(1024, 4 * cfg.batch_size))  # (the first outputs wait for
        # a chunk: 1,024 lines at the default batch of 256, as before at 64)
        with writing_results("the outputs"), measuring(threads, dev):  # (batches on measured threads)
            for chunk in feed.chunks():
                for hyps in transducer.run(chunk):
                    sys.stdout.write(join_line(hyps, scores) + "\n")
                sys.stdout.flush()
        if not quiet:
            for note in transducer.notes():
                err.print(f"note: {note}", markup=False)
