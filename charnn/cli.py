"""The `charnn` command line: parse flags, build configs, call the library, map errors to exit codes.

stdout carries generated text (and `eval`'s result) only; everything else goes to stderr.
"""

from __future__ import annotations

import json
import math
import os
import random
import shlex
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, List, Optional

import typer
from rich.console import Console
from rich.markup import escape

from charnn import __version__
from charnn.config import CELLS, DEVICES, PRECISIONS, TOKENIZERS, ModelConfig, SampleConfig, TrainConfig, parse_duration
from charnn.errors import CharnnError, ConfigError

err = Console(stderr=True, highlight=False, soft_wrap=True)


# Typer >= 0.26 vendors its own click; take the exception classes from whichever click it uses.
_click_exceptions = sys.modules[typer.BadParameter.__module__]
_UsageError = _click_exceptions.UsageError
_ClickException = _click_exceptions.ClickException
_NO_ARGS_HELP = getattr(_click_exceptions, "NoArgsIsHelpError", ())  # click >= 8.2


class OneLineErrors(typer.core.TyperGroup):
    """Usage errors as one line on stderr (exit 2) instead of a multi-line box."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _NO_ARGS_HELP:  # the help was already shown
            sys.exit(2)
        except _UsageError as e:
            cmd = e.ctx.command_path if e.ctx else "charnn"
            typer.echo(f"{cmd}: error: {e.format_message()} (see '{cmd} --help')", err=True)
            sys.exit(2)
        except _ClickException as e:
            typer.echo(f"charnn: error: {e.format_message()}", err=True)
            sys.exit(e.exit_code)
        except typer.Abort:
            sys.exit(130)
        sys.exit(rv if isinstance(rv, int) else 0)


app = typer.Typer(cls=OneLineErrors, add_completion=True, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train, sample and evaluate stacked-LSTM language models over characters.")


@contextmanager
def user_errors():
    """Map library errors to one red line and an exit code; CHARNN_DEBUG=1 shows the traceback."""
    debug = os.environ.get("CHARNN_DEBUG", "") not in ("", "0")
    oom = "out of memory; try a smaller --batch-size, --hidden or corpus"
    try:
        yield
    except (CharnnError, KeyboardInterrupt, MemoryError, RuntimeError) as e:
        # torch reports a failed allocation as a RuntimeError; any other RuntimeError is a bug: let it show
        if debug or (isinstance(e, RuntimeError) and not _is_out_of_memory(e)):
            raise
        if isinstance(e, KeyboardInterrupt):
            err.print("[yellow]interrupted[/]", markup=True)
            raise typer.Exit(130) from None
        err.print(f"[red]charnn: error:[/] {escape(str(e)) if isinstance(e, CharnnError) else oom}", markup=True)
        raise typer.Exit(2 if isinstance(e, ConfigError) else 1) from None


def _is_out_of_memory(e: BaseException) -> bool:
    text = str(e).lower()
    return "out of memory" in text or "can't allocate memory" in text or "not enough memory" in text


def _version(value: bool):
    if value:
        typer.echo(f"charnn {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False):
    """Train, sample and evaluate stacked-LSTM language models over characters."""


Device = Annotated[str, typer.Option(help=f"Device: {', '.join(DEVICES)} (auto: CUDA when present).")]
Seed = Annotated[Optional[int], typer.Option(help="Random seed (default: a fresh one, reported on stderr).")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Silence notes on stderr.")]


@app.command()
def train(
    corpus: Annotated[Optional[List[str]], typer.Argument(
        help="Text files and folders (read recursively), or a catalog name (see `charnn corpora`). Default: Python's "
             "standard library source, assembled offline (about 5 MB).", show_default=False)] = None,
    glob: Annotated[Optional[str], typer.Option(help="Inside folders, take only files matching this pattern, "
                                                     "e.g. '*.py'.")] = None,
    name: Annotated[Optional[str], typer.Option(help="Run name (default: the corpus file's stem).")] = None,
    out: Annotated[str, typer.Option(help="Root folder for runs.")] = "checkpoints",
    cell: Annotated[str, typer.Option(help=f"Recurrent cell: {', '.join(CELLS)}.")] = "lstm",
    layers: Annotated[int, typer.Option(help="Stacked recurrent layers.")] = 2,
    hidden: Annotated[int, typer.Option(help="Hidden units per layer.")] = 256,
    embed: Annotated[int, typer.Option(help="Embedding width.")] = 64,
    dropout: Annotated[float, typer.Option(help="Dropout between layers and before the head.")] = 0.1,
    val_frac: Annotated[float, typer.Option(help="Last fraction of the text held out for validation.")] = 0.1,
    val_file: Annotated[Optional[str], typer.Option(help="Validate on this file instead (trains on all of CORPUS).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Contiguous streams per batch, over all processes "
                                                           "under torchrun (default: 8 on the CPU, 256 on a CUDA "
                                                           "GPU, per process).", show_default=False)] = None,
    seq_len: Annotated[int, typer.Option(help="Characters per stream per step (BPTT length).")] = 128,
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW).")] = 1e-2,
    warmup: Annotated[int, typer.Option(help="Linear warm-up steps.")] = 50,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay on weight matrices.")] = 0.1,
    grad_clip: Annotated[float, typer.Option(help="Clip the global gradient norm to this (0: off).")] = 1.0,
    max_steps: Annotated[Optional[int], typer.Option(help="Stop after this many steps.")] = None,
    max_time: Annotated[Optional[str], typer.Option(help="Time budget for the whole run: 300, 90s, 5m, 1h.")] = None,
    epochs: Annotated[Optional[float], typer.Option(help="Stop after this many passes over the text.")] = None,
    patience: Annotated[int, typer.Option(help="With no limit given: stop after this many evaluations "
                                               "without improvement.")] = 5,
    eval_every: Annotated[int, typer.Option(help="Steps between validation passes (and checkpoint saves).")] = 1000,
    eval_tokens: Annotated[int, typer.Option(help="Validation passes score the first this many validation tokens "
                                                  "(0: all of them).")] = 1_000_000,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 1337,
    device: Device = "auto",
    precision: Annotated[str, typer.Option(help=f"Autocast precision: {', '.join(PRECISIONS)} (auto: bf16 on "
                                                 "CUDA GPUs with bf16 and CPUs with AMX, else fp32; weights "
                                                 "and checkpoints stay fp32).")] = "auto",
    threads: Annotated[Optional[int], typer.Option(help="CPU threads (default: torch's choice).")] = None,
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the model's training forward "
                                                            "(opt-in; see benchmarks/TRAINING.md for when it "
                                                            "pays).")] = False,
    encoding: Annotated[str, typer.Option(help="Text encoding of CORPUS and --val-file.")] = "utf-8",
    resume: Annotated[bool, typer.Option(help="Continue run NAME from its last.pt (its saved settings; "
                                              "flags given now, e.g. a larger --max-steps, override).")] = False,
    save_every_secs: Annotated[float, typer.Option(help="Also refresh last.pt after this many seconds without "
                                                        "a save (0: only at evaluations).")] = 60.0,
    tokenizer: Annotated[str, typer.Option(help=f"Tokens: {', '.join(TOKENIZERS)} (bpe/unigram: a sentencepiece "
                                                "model trained on the training split, up to 4M characters of "
                                                "it, stored in the checkpoint).")] = "char",
    vocab_size: Annotated[Optional[int], typer.Option(help="Vocabulary size for bpe/unigram (default 1024; at "
                                                           "least 256 byte pieces + 1 + the text's characters).",
                                                      show_default=False)] = None,
    log_every: Annotated[int, typer.Option(min=1, help="Steps between records in the run's metrics.jsonl "
                                                       "(evaluation steps are always recorded).")] = 10,
    preview_every: Annotated[int, typer.Option(min=0, help="Every N steps, print a 200-character sample "
                                                           "(temperature 0.8) on stderr (0: never).")] = 0,
    quiet: Quiet = False,
    ctx: typer.Context = None,
):
    """Train a model on CORPUS; checkpoints land in OUT/NAME/best.pt and last.pt."""
    from charnn.corpus import load_corpus
    from charnn.distributed import Dist
    from charnn.metrics import Callbacks, MetricsLogger, run_config
    from charnn.preview import SamplePreview
    from charnn.progress import TrainProgress
    from charnn.train import StopRequest, TrainingInterrupted, Trainer, graceful_signals

    dist = Dist.from_env()  # under torchrun: this process's rank; only rank 0 writes files and talks
    if not dist.is_main:
        err.quiet = True
    with _other_ranks_exit_quietly(dist), user_errors(), dist:
        model_cfg = ModelConfig(vocab_size=1, cell=cell, layers=layers, hidden=hidden, embed=embed,
                                dropout=dropout).validate()
        cfg = TrainConfig(out=out, name=name, val_frac=val_frac, val_file=val_file, batch_size=batch_size,
                          seq_len=seq_len, lr=lr, warmup=warmup, weight_decay=weight_decay, grad_clip=grad_clip,
                          seed=seed, max_steps=max_steps, max_time=parse_duration(max_time) if max_time else None,
                          epochs=epochs, patience=patience, eval_every=eval_every, eval_tokens=eval_tokens, device=device,
                          precision=precision, threads=threads, tokenizer=tokenizer,
                          vocab_size=vocab_size, save_every_secs=save_every_secs, compile=compile).validate()
        stop = StopRequest()
        with graceful_signals(stop):
            view = TrainProgress(err, cfg.open_ended, quiet)
            events = Callbacks(view)
            corpus_args = list(corpus or [])
            try:
                corpus = load_corpus(corpus_args, encoding, glob, events)
            finally:
                view.download.close()
            trainer = Trainer(corpus, model_cfg, cfg, events, resume=resume, stop=stop, encoding=encoding,
                              explicit=_given_on_command_line(ctx), dist=dist)
            metrics = None
            if dist.is_main:
                metrics = events.add(MetricsLogger(trainer.run_dir, log_every, resume, run_config(trainer, corpus.source)))
            if preview_every and dist.is_main:
                events.add(SamplePreview(trainer.model, trainer.tokenizer, trainer.device, preview_every,
                                         _print_preview, seed=cfg.seed))
            try:
                with view:
                    result = trainer.fit()
            except TrainingInterrupted as e:
                code = 143 if e.signum == 15 else 130
                if e.path is None:
                    err.print("[yellow]stopped before the first step; nothing was saved[/]", markup=True)
                    raise typer.Exit(code) from None
                enc = f"--encoding {encoding} " if encoding.lower() not in ("utf-8", "utf8") else ""
                err.print(f"[yellow]stopped at step {trainer.step}; saved {e.path}. Resume with: {_launcher(dist)}charnn train "
                          f"{''.join(_quote(a) for a in corpus_args)}--name {trainer.run_dir.name} "
                          f"--out {shlex.quote(cfg.out)} {enc}--resume[/]", markup=True)
                raise typer.Exit(code) from None
            finally:
                if metrics is not None:
                    metrics.close()  # the last step's record, also when training stopped early
        if not quiet and dist.is_main:
            bits = result.best_val_loss / math.log(2)
            err.print(f"done ({result.stopped}) after {result.steps} steps, {result.elapsed:.0f}s: best val "
                      f"{result.best_val_loss:.4f} nats/char ({bits:.3f} bits/char) -> {result.run_dir / 'best.pt'}")
            _print_curve(err, trainer.run_dir)
            err.print(f"sample it with: charnn sample {result.run_dir}")


@contextmanager
def _other_ranks_exit_quietly(dist):
    """Under torchrun only rank 0 speaks: any other rank that fails exits 1 without a traceback (rank 0 says
    what went wrong, or torchrun reports the rank). CHARNN_DEBUG=1 shows every rank's traceback."""
    try:
        yield
    except Exception as e:
        if dist.is_main or isinstance(e, typer.Exit) or os.environ.get("CHARNN_DEBUG", "") not in ("", "0"):
            raise
        raise typer.Exit(1) from None


def _launcher(dist) -> str:
    """How the resume hint starts: plain, or with the torchrun that started this run on one machine."""
    if not dist.active:
        return ""
    if dist.local_world == dist.world:
        return f"torchrun --nproc-per-node {dist.world} -m "
    return "torchrun <the same --nnodes/--node-rank/--rdzv-endpoint flags> -m "


def _given_on_command_line(ctx) -> Optional[set]:
    """Names of the flags typed on this command line (a resumed run keeps its saved value for the rest)."""
    if ctx is None:
        return None
    return {k for k in ctx.params if getattr(ctx.get_parameter_source(k), "name", "") in ("COMMANDLINE", "ENVIRONMENT")}


def _print_preview(step: int, text: str) -> None:
    err.rule(f"sample at step {step}", style="dim")
    err.print(text.rstrip("\n"), markup=False, highlight=False)


def _print_curve(console: Console, run_dir: Path) -> None:
    """The run's train and val loss over steps, from its metrics.jsonl, drawn in the terminal."""
    from charnn.metrics import METRICS_FILE, curves, read_metrics
    from charnn.textplot import line_plot

    train_pts, val_pts = curves(read_metrics(run_dir / METRICS_FILE))
    if len(train_pts) + len(val_pts) < 2:
        return
    colours = ("cyan", "magenta")
    lines = line_plot([("train", train_pts, "line"), ("val", val_pts, "points")],
                      width=max(20, min(72, console.width - 12)), height=10,
                      paint=lambda text, i: f"[{colours[i % 2]}]{text}[/]")
    console.print("loss (nats/char) over steps", highlight=False)
    for line in lines:
        console.print(line, markup=True, highlight=False)


def _quote(path: str) -> str:
    return f"{shlex.quote(path)} " if path else ""


@app.command()
def sample(
    checkpoint: Annotated[Optional[str], typer.Argument(help="A .pt file or run folder (default: the newest run "
                                                             "under ./checkpoints).", show_default=False)] = None,
    temp: Annotated[float, typer.Option("--temp", "--temperature", help="Softmax temperature (> 0); lower is "
                                                                        "more conservative.")] = 1.0,
    top_k: Annotated[Optional[int], typer.Option(help="Draw only from the K most likely characters.")] = None,
    top_p: Annotated[Optional[float], typer.Option(help="Nucleus sampling: draw only from the most likely characters "
                                                        "whose probabilities add up to P (0 < P <= 1).")] = None,
    greedy: Annotated[bool, typer.Option("--greedy", help="Always take the most likely character "
                                                          "(the same as --top-k 1).")] = False,
    length: Annotated[int, typer.Option(help="Characters to generate after the prime, per sample.")] = 500,
    prime: Annotated[str, typer.Option(help="Text to start from; the output begins with it.")] = "",
    prime_file: Annotated[Optional[str], typer.Option(help="Start from this file's text; '-' reads stdin.")] = None,
    unknown: Annotated[str, typer.Option(help="Prime characters the model does not know: error, or skip "
                                              "(drop them).")] = "error",
    num_samples: Annotated[int, typer.Option("--num-samples", "-n", help="Samples to generate together as one "
                                                                         "batch, printed one after another.")] = 1,
    separator: Annotated[str, typer.Option(help="Printed between samples; \\n and \\t are understood.")] = "\\n\\n",
    stop: Annotated[Optional[str], typer.Option(help="End a sample right after the first occurrence of STOP "
                                                     "(\\n and \\t are understood).")] = None,
    seed: Seed = None,
    device: Device = "auto",
    int8: Annotated[bool, typer.Option("--int8", help="CPU only: int8 recurrent weights, about 3x faster for "
                                                      "one stream of a big model (2x for 64); the text comes from "
                                                      "a close approximation of the model "
                                                      "(benchmarks/SAMPLING.md).")] = False,
    quiet: Quiet = False,
):
    """Generate text from a trained model; stdout carries the text and nothing else."""
    import time

    from charnn.checkpoint import build_from_checkpoint, load_checkpoint, resolve_checkpoint
    from charnn.device import resolve_device
    from charnn.sample import Sampler, read_prime

    with user_errors():
        if prime and prime_file is not None:
            raise ConfigError("Can't provide both `--prime` and `--prime-file`. Choose one.")
        cfg = SampleConfig(length=length, temperature=temp, top_k=top_k, top_p=top_p, greedy=greedy, prime=prime,
                           unknown=unknown, num_samples=num_samples, separator=_unescape(separator),
                           stop=None if stop is None else _unescape(stop), seed=seed, device=device,
                           int8=int8).validate()
        dev = resolve_device(cfg.device)
        path = resolve_checkpoint(checkpoint)
        if prime_file is not None:
            cfg.prime = read_prime(prime_file)
        model, tokenizer = build_from_checkpoint(load_checkpoint(path), dev)
        used_seed = cfg.seed if cfg.seed is not None else random.SystemRandom().randrange(2**31)
        sampler = Sampler(model, tokenizer, cfg, dev, used_seed)
        if not quiet:
            if sampler.skipped:
                err.print(f"note: dropped from the prime (not in the vocabulary): "
                          f"{', '.join(repr(c) for c in sampler.skipped[:10])}")
            err.print(f"sampling {path} on {dev}, seed {used_seed}")
        t0, last, noted = time.perf_counter(), "\n", 0
        try:
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
            sys.stdout.flush()
        except BrokenPipeError:
            _quiet_broken_pipe()
            raise typer.Exit(0) from None
        if not quiet:
            dt = time.perf_counter() - t0
            err.print(f"{sampler.chars:,} characters in {dt:.2f}s ({sampler.chars / max(dt, 1e-9):,.0f} chars/s)")


def _unescape(text: str) -> str:
    """'\\n' -> newline, '\\t' -> tab, '\\\\' -> backslash, so separators and stops can be typed in a shell."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in "nt\\":
            out.append({"n": "\n", "t": "\t", "\\": "\\"}[text[i + 1]])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _quiet_broken_pipe() -> None:
    """The reader went away (`| head`): stop quietly; point stdout at /dev/null so the final flush is silent."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


@app.command("eval")
def evaluate(
    paths: Annotated[List[str], typer.Argument(help="[CHECKPOINT] FILE...: a .pt file or run folder (default: the "
                                                    "newest run), then one or more text files.",
                                               show_default=False)],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    device: Device = "auto",
    encoding: Annotated[str, typer.Option(help="Text encoding of the files.")] = "utf-8",
):
    """Score text files: nats and bits per character, perplexity, characters and tokens."""
    from charnn.checkpoint import build_from_checkpoint, load_checkpoint, resolve_checkpoint
    from charnn.corpus import read_text
    from charnn.device import resolve_device
    from charnn.evaluate import combine, evaluate_text

    with user_errors():
        first = Path(paths[0])
        if len(paths) > 1 and (first.suffix == ".pt" or first.is_dir()):
            ckpt, files = paths[0], paths[1:]
        else:
            ckpt, files = None, paths
        dev = resolve_device(device)
        path = resolve_checkpoint(ckpt)
        data = load_checkpoint(path)
        model, tokenizer = build_from_checkpoint(data, dev)
        results = [evaluate_text(model, tokenizer, read_text(f, "file", encoding), dev) for f in files]
        total = combine(results)
        if total.unknown:
            err.print(f"note: {total.unknown:,} characters are not in the model's vocabulary; "
                      "they are scored as the unknown token")
        if as_json:
            out = {**total.to_dict(), "checkpoint": str(path), "files": [
                {"path": f, **r.to_dict()} for f, r in zip(files, results)]}
            typer.echo(json.dumps(out))
            return
        rows = [(f, r) for f, r in zip(files, results)] + ([("total", total)] if len(files) > 1 else [])
        typer.echo(f"{'file':<30} {'nats/char':>10} {'bits/char':>10} {'perplexity':>11} {'chars':>10} {'tokens':>10}")
        for f, r in rows:
            typer.echo(f"{f:<30} {r.nats_per_char:>10.4f} {r.bits_per_char:>10.4f} {r.perplexity:>11.3f} "
                       f"{r.chars:>10,} {r.tokens:>10,}")


@app.command()
def info(
    checkpoint: Annotated[Optional[str], typer.Argument(help="A .pt file or run folder (default: the newest run "
                                                             "under ./checkpoints).", show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
):
    """Describe a checkpoint: model, tokenizer, training so far, format version, and the loss curve."""
    from charnn.info import describe, summary_lines

    with user_errors():
        facts = describe(checkpoint)
    if as_json:
        typer.echo(json.dumps(facts, ensure_ascii=False))
        return
    out = Console(highlight=False, soft_wrap=True)
    for line in summary_lines(facts):
        out.print(line, markup=False)
    out.print()
    _print_curve(out, Path(facts["run_dir"]))


@app.command()
def corpora(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
):
    """List the catalog of public corpora `charnn train NAME` downloads, and which are already here."""
    from charnn.cache import cache_root
    from charnn.catalog import catalog_path, listing

    with user_errors():
        entries = listing()
    if as_json:
        typer.echo(json.dumps({"catalog": str(catalog_path()), "cache": str(cache_root()), "corpora": entries}))
        return
    typer.echo(f"{'name':<22} {'size':>10}  {'here':<4}  {'sha256':<8}  description")
    for e in entries:
        size = f"{e['size'] / 1e6:,.1f} MB" if e.get("size") else "?"
        typer.echo(f"{e['name']:<22} {size:>10}  {'yes' if e['downloaded'] else '-':<4}  "
                   f"{'pinned' if e.get('sha256') else 'none':<8}  {e['description']}")
    err.print(f"cache: {cache_root()} (set CHARNN_CACHE to move it); train one with: charnn train NAME",
              highlight=False)


@app.command()
def plot(
    runs: Annotated[List[str], typer.Argument(help="Run folders (or their checkpoints, or metrics.jsonl files).",
                                              show_default=False)],
    output: Annotated[str, typer.Option("--output", "-o", help="Image to write (.png, .svg or .pdf).")] = "curves.png",
    x: Annotated[str, typer.Option(help="Horizontal axis: step or time.")] = "step",
    quiet: Quiet = False,
):
    """Draw the train and validation loss of one or more runs into an image (needs matplotlib: pip install -e '.\\[plot]')."""
    from charnn.plot import X_AXES, plot_runs, run_records

    with user_errors():
        if x not in X_AXES:
            raise ConfigError(f"`--x` must be one of {', '.join(X_AXES)}, not {x!r}")
        path = plot_runs([run_records(r) for r in runs], Path(output), x)
    if not quiet:
        err.print(f"wrote {path}")


def main() -> None:
    app(prog_name="charnn")
