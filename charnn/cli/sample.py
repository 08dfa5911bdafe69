"""`charnn sample`: load a checkpoint, stream generated text to stdout; notes and speed go to stderr."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from charnn.cli.options import (Checkpoint, Device, DynamicDecay, DynamicLr, Label, Quiet, Seed, Segment,
                                dynamic_config, typed_text, unescape)
from charnn.cli.output import err, note_threads, user_errors, writing_results
from charnn.sampling import SampleConfig
from charnn.errors import CharnnError, ConfigError, chars_shown


def sample(
    checkpoint: Checkpoint = None,
    temp: Annotated[float, typer.Option("--temp", "--temperature", help="Softmax temperature (>= 0); lower is "
                                                                        "more conservative; 0 is greedy (as "
                                                                        "--greedy).")] = 1.0,
    top_k: Annotated[Optional[int], typer.Option(help="Draw only from the K most likely tokens (characters, or "
                                                      "subword pieces for a bpe/unigram model).")] = None,
    top_p: Annotated[Optional[float], typer.Option(help="Nucleus sampling: draw only from the most likely tokens "
                                                        "whose probabilities add up to P (0 < P <= 1).")] = None,
    greedy: Annotated[bool, typer.Option("--greedy", help="Always take the most likely token "
                                                          "(the same as --top-k 1 and --temp 0).")] = False,
    length: Annotated[int, typer.Option(help="Characters to generate after the prime, per sample.")] = 500,
    prime: Annotated[str, typer.Option(help="Text to start from; the output begins with it (\\n, \\t and \\\\ "
                                            "are understood; --prime-file reads text as it is).")] = "",
    prime_file: Annotated[Optional[str], typer.Option(help="Start from this file's text; '-' reads stdin.")] = None,
    encoding: Annotated[str, typer.Option(help="Text encoding of --prime-file and --adapt.")] = "utf-8",
    unknown: Annotated[str, typer.Option(help="Prime characters the model does not know: error, or skip "
                                              "(drop them).")] = "error",
    num_samples: Annotated[int, typer.Option("--num-samples", "-n", help="Samples to generate together as one "
                                                                         "batch, printed one after another.")] = 1,
    separator: Annotated[str, typer.Option(help="Printed between samples; \\n and \\t are understood.")] = "\\n\\n",
    stop: Annotated[Optional[str], typer.Option(help="End a sample right after the first occurrence of STOP "
                                                     "(\\n and \\t are understood).")] = None,
    seed: Seed = None,
    device: Device = "auto",
    int8: Annotated[bool, typer.Option("--int8", help="CPU only: int8 recurrent weights, 11-13x faster for "
                                                      "one stream of a 2x512 LSTM (2.7-2.9x for 64) on an AVX-512 "
                                                      "VNNI Xeon; the text comes from a close approximation of the "
                                                      "model (benchmarks/SAMPLING.md).")] = False,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads. Default: measured while sampling, torch's "
                                                        "count or one, whichever is faster (one where another "
                                                        "process holds a core); a fixed count makes a seeded "
                                                        "sample repeatable to the character.")] = None,
    adapt: Annotated[Optional[str], typer.Option(help="First run dynamic evaluation over this file ('-': stdin; "
                                                      "the weights adapt in memory, the checkpoint is not changed), "
                                                      "then sample from the prime or start as usual, with the "
                                                      "adapted weights.",
                                                 show_default=False)] = None,
    dynamic_lr: DynamicLr = None,
    dynamic_decay: DynamicDecay = None,
    segment: Segment = None,
    label: Label = None,
    quiet: Quiet = False,
):
    """Generate text from a trained model; stdout carries the text and nothing else."""
    from charnn.api.model import load_model
    from charnn.checkpoint import SEQ2SEQ_HINT
    from charnn.data.sources import check_encoding
    from charnn.generation.prompt import read_prime
    from charnn.generation.sampler import Sampler
    from charnn.threadwatch import measuring

    with user_errors("sample"):
        _check_inputs(prime, prime_file, adapt, quiet)
        check_encoding(encoding)  # (a latin-1 model could not be primed from its own corpus; the errors named it)
        prime, separator, stop = (typed_text(f, v) for f, v in (("--prime", prime), ("--separator", separator),
                                                                ("--stop", stop)))
        cfg = SampleConfig(length=length, temperature=temp, top_k=top_k, top_p=top_p, greedy=greedy,
                           prime=unescape(prime), unknown=unknown, num_samples=num_samples,
                           separator=unescape(separator), stop=None if stop is None else unescape(stop), seed=seed,
                           device=device, int8=int8, threads=threads).validate()
        note_threads(cfg.threads, quiet)
        adapting = dynamic_config(adapt is not None, "--adapt", dynamic_lr, dynamic_decay, segment)
        model = load_model(checkpoint, cfg.device, cfg.int8)  # the loader of the Python API and the server
        if model.kind == "seq2seq":
            raise CharnnError(f"this checkpoint {SEQ2SEQ_HINT}")
        if not model.generates:  # (before the "sampling ..." line: the error alone)
            raise CharnnError("this checkpoint is a classifier (train --classifier): it labels texts and writes "
                              "none; use `charnn classify`")
        if prime_file is not None:
            cfg.prime = read_prime(prime_file, encoding)
        if label is not None:  # the label folded into the embedding: every sampler path serves it as is
            from charnn.scoring.classify import label_id
            label_id(model.labels, label)  # (in the command's words: for_label's are the API's)
            model = model.for_label(label)
        if adapt is not None:
            with measuring(cfg.threads, model.device):  # (--threads, or measured, for the adapting pass too)
                model = _adapt(model, adapt, cfg.unknown, adapting, quiet, encoding)
        used_seed = cfg.sampling.seeded().seed
        sampler = Sampler(model.net, model.tokenizer, cfg, model.device, used_seed, measure=True)
        if not quiet:
            if sampler.skipped:
                err.print(f"note: dropped from the prime (not in the vocabulary): "
                          f"{chars_shown(sampler.skipped)}")
            err.print(f"sampling {model.path}{f' as {label!r}' if label is not None else ''} on {model.device}, "
                      f"seed {used_seed}")
        _stream(sampler, quiet, model.device.type == "cpu")


def _check_inputs(prime: str, prime_file: Optional[str], adapt: Optional[str], quiet: bool) -> None:
    """One prime, stdin read once, and a line where a terminal is read."""
    if prime and prime_file is not None:
        raise ConfigError("Can't provide both `--prime` and `--prime-file`. Choose one.")
    if prime_file == "-" and adapt == "-":
        raise ConfigError("`-` (stdin) can be read once: give --prime-file or --adapt a file")
    if "-" in (prime_file, adapt) and sys.stdin is not None and sys.stdin.isatty() and not quiet:
        err.print(f"reading the {'prime' if prime_file == '-' else '--adapt text'} from the terminal (Ctrl-D ends)")


def _adapt(model, path: str, unknown: str, cfg, quiet: bool, encoding: str = "utf-8"):
    """The model after dynamic evaluation over the file at `path` (`Model.adapt`: a copy, the loaded weights are
    left as they are); characters it does not know are an error or, with --unknown skip, dropped (a note says
    which)."""
    from charnn.generation.prompt import clean_prime, read_prime

    text, skipped = clean_prime(model.tokenizer, read_prime(path, encoding, what="adapt file"), unknown,
                                what=f"--adapt {path!r}")
    if not text:
        raise CharnnError(f"--adapt {path!r} has no characters the model knows")
    adapted = model.adapt(text, cfg.lr, cfg.decay, cfg.segment)
    if not quiet:
        done = adapted.adaptation
        if skipped:
            err.print(f"note: dropped from --adapt (not in the vocabulary): {chars_shown(skipped)}")
        source = "stdin" if path == "-" else path
        err.print(f"adapted to {source}: {done.result.chars:,} characters in {done.seconds:.2f}s "
                  f"({done.result.nats_per_char:.4f} nats/char while adapting)", markup=False)
    return adapted


def _stream(sampler, quiet: bool, cpu: bool) -> None:
    """Write each piece to stdout as it is made, fallback notes to stderr as they happen, then the speed."""
    import time

    from charnn.models import native
    if cpu:  # (a GPU run never uses the C library)
        native.library()  # the fused cells' one-time build (a fraction of a second) is not the sampling speed
    t0, last, noted = time.perf_counter(), "\n", 0
    with writing_results("the generated text"):
        for piece in sampler:
            if piece:
                sys.stdout.write(piece)
                sys.stdout.flush()
                last = piece[-1]
            if len(sampler.notes) > noted and not quiet:  # a fallback taken: say so while it happens
                for note in sampler.notes[noted:]:
                    err.print(f"note: {note}", markup=False)
                noted = len(sampler.notes)
        if last != "\n":
            sys.stdout.write("\n")
    if not quiet:
        dt = time.perf_counter() - t0
        watch = sampler.watch  # measured threads: what won (one, where another process held a core)
        n = watch.threads if watch and watch.choices else 0
        threads = f"; {n} CPU thread{'s' * (n > 1)}, measured" if n else ""
        err.print(f"{sampler.chars:,} characters in {dt:.2f}s ({sampler.chars / max(dt, 1e-9):,.0f} chars/s{threads})")
