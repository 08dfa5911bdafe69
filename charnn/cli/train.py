"""`charnn train`: flags -> configs -> corpus -> trainer (+ metrics, previews, progress) -> fit, under signals."""

from __future__ import annotations

import math
import shlex
import time
from contextlib import contextmanager
from typing import Annotated, List, Optional

import typer

from charnn.cli.options import Device, Quiet
from charnn.cli.output import debugging, err, print_curve, user_errors
from charnn.errors import ConfigError
from charnn.config import CELLS, PRECISIONS, TOKENIZERS, ModelConfig, TrainConfig, parse_duration


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
    val_file: Annotated[Optional[str], typer.Option(help="Validate on this file (or catalog name) instead "
                                                         "(trains on all of CORPUS).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Contiguous streams per batch, over all processes "
                                                           "under torchrun (the default is per process; --pairs: "
                                                           "pairs per batch).",
                                                      show_default="8 on the CPU, 256 on a CUDA GPU; --pairs: 32 "
                                                                   "on the CPU")] = None,
    seq_len: Annotated[int, typer.Option(help="Characters per stream per step (BPTT length).")] = 128,
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW); 3e-3 with --init-from.")] = 1e-2,
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
    precision: Annotated[str, typer.Option(help=f"Autocast precision: {', '.join(PRECISIONS)} (auto: times a few "
                                                 "training steps in fp32 and bf16 where the hardware has native "
                                                 "bf16 and keeps the faster, remembered per machine and model "
                                                 "shape; weights and checkpoints stay fp32).")] = "auto",
    threads: Annotated[Optional[int], typer.Option(help="CPU threads for torch. Default: measured, the count "
                                                        "whose training steps run fastest (1, 2, 4, ... up to the "
                                                        "cores), measured again when the step time jumps (another "
                                                        "process took or left a core). Give a number for bitwise "
                                                        "repeatable runs.",
                                                   show_default="measured")] = None,
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the model's training forward "
                                                            "(opt-in; see benchmarks/TRAINING.md for when it "
                                                            "pays).")] = False,
    encoding: Annotated[str, typer.Option(help="Text encoding of CORPUS and --val-file.")] = "utf-8",
    init_from: Annotated[Optional[str], typer.Option(help="Fine-tune: start from this checkpoint or run folder's "
                                                          "weights, architecture and vocabulary (characters the "
                                                          "new text adds get new ids); fresh optimiser and "
                                                          "schedule; --lr defaults to 3e-3.",
                                                     show_default=False)] = None,
    label_by: Annotated[Optional[str], typer.Option(help="Condition the model on labels: file (each CORPUS file is "
                                                         "a label, by its stem), folder (each subfolder of a CORPUS "
                                                         "folder), line (each line is label<TAB>text). Then "
                                                         "`sample --label` and `classify` work.",
                                                    show_default=False)] = None,
    label_dropout: Annotated[float, typer.Option(help="With labels: the share of training windows shown without "
                                                      "their label (the unconditional path).")] = 0.1,
    label_contrast: Annotated[float, typer.Option(help="With labels: weight of a loss that raises each text's "
                                                       "likelihood under its own label above its likelihood "
                                                       "under other labels (sharper `classify`; a step costs "
                                                       "more).")] = 0.0,
    label_negatives: Annotated[int, typer.Option(help="With --label-contrast: how many other labels each text is "
                                                      "compared with per step (each adds a forward pass of the "
                                                      "batch).")] = 1,
    skip_bad_lines: Annotated[bool, typer.Option("--skip-bad-lines", help="--label-by line / --pairs: skip and "
                                                                         "count lines that are not label<TAB>text "
                                                                         "(input<TAB>target).")] = False,
    pairs: Annotated[bool, typer.Option("--pairs", help="Sequence to sequence: every line of CORPUS is "
                                                        "input<TAB>target; trains an encoder-decoder for "
                                                        "`charnn transduce`.")] = False,
    attention: Annotated[bool, typer.Option(" /--no-attention", help="--pairs: no attention; the decoder starts "
                                                                       "from the encoder's final state only.",
                                            show_default=False)] = True,
    bidirectional: Annotated[bool, typer.Option(" /--unidirectional", help="--pairs: the encoder reads the input "
                                                                             "left to right only.",
                                                show_default=False)] = True,
    attention_score: Annotated[str, typer.Option(help="--pairs: how the decoder scores input positions: general "
                                                      "(Luong's h^T W a) or additive (Bahdanau's v^T tanh(W h + "
                                                      "U a)).")] = "general",
    resume: Annotated[bool, typer.Option(help="Continue run NAME from its last.pt (its saved settings; "
                                              "flags given now, e.g. a larger --max-steps, override).")] = False,
    save_every_secs: Annotated[float, typer.Option(help="Also refresh last.pt after this many seconds without "
                                                        "a save (0: only at evaluations).")] = 60.0,
    tokenizer: Annotated[str, typer.Option(help=f"Tokens: {', '.join(TOKENIZERS)} (bpe/unigram: a sentencepiece "
                                                "model trained on the training split, up to 4M characters of "
                                                "it, stored in the checkpoint).")] = "char",
    vocab_size: Annotated[Optional[int], typer.Option(help="Vocabulary size for bpe/unigram (at least 256 byte "
                                                           "pieces + 1 + the text's characters).",
                                                      show_default="1024 with bpe/unigram")] = None,
    log_every: Annotated[int, typer.Option(min=1, help="Steps between records in the run's metrics.jsonl "
                                                       "(evaluation steps are always recorded).")] = 10,
    preview_every: Annotated[int, typer.Option(min=0, help="Every N steps, print a 200-character sample "
                                                           "(temperature 0.8) on stderr (--pairs: a few validation "
                                                           "inputs and their current outputs; 0: never).")] = 0,
    quiet: Quiet = False,
    ctx: typer.Context = None,
):
    """Train a model on CORPUS; checkpoints land in OUT/NAME/best.pt and last.pt."""
    from charnn.cli.progress import TrainProgress
    from charnn.data.labels import load_corpus
    from charnn.training.distributed import Dist
    from charnn.training.metrics import Callbacks
    from charnn.training.trainer import StopRequest, Trainer, TrainingInterrupted, graceful_signals, process_age

    started = time.perf_counter() - process_age()  # --max-time counts from the command's start, imports included
    dist = Dist.from_env()  # under torchrun: this process's rank; only rank 0 writes files and talks
    if not dist.is_main:
        err.quiet = True
    with _other_ranks_exit_quietly(dist), user_errors(), dist:
        if not pairs and not (attention and bidirectional and attention_score == "general"):
            raise ConfigError("`--no-attention`, `--unidirectional` and `--attention-score` shape a --pairs "
                              "(sequence-to-sequence) model; add --pairs")
        model_cfg = ModelConfig(vocab_size=1, cell=cell, layers=layers, hidden=hidden, embed=embed,
                                dropout=dropout, attention=attention, bidirectional=bidirectional,
                                attention_score=attention_score).validate()
        cfg = TrainConfig(out=out, name=name, val_frac=val_frac, val_file=val_file, batch_size=batch_size,
                          seq_len=seq_len, lr=lr, warmup=warmup, weight_decay=weight_decay, grad_clip=grad_clip,
                          seed=seed, max_steps=max_steps, max_time=parse_duration(max_time) if max_time else None,
                          epochs=epochs, patience=patience, eval_every=eval_every, eval_tokens=eval_tokens, device=device,
                          precision=precision, threads=threads, tokenizer=tokenizer,
                          vocab_size=vocab_size, save_every_secs=save_every_secs, compile=compile,
                          init_from=init_from, label_by=label_by, label_dropout=label_dropout, label_contrast=label_contrast,
                          label_negatives=label_negatives,
                          skip_bad_lines=skip_bad_lines, pairs=pairs).validate()
        stop = StopRequest()
        with graceful_signals(stop):
            view = TrainProgress(err, cfg.open_ended, quiet)
            events = Callbacks(view)
            corpus_args = list(corpus or [])
            try:
                corpus = load_corpus(corpus_args, encoding, glob, events, cfg)
            finally:
                view.download.close()
            trainer = Trainer(corpus, model_cfg, cfg, events, resume=resume, stop=stop, encoding=encoding,
                              explicit=_given_on_command_line(ctx), dist=dist, started=started)
            metrics = _observe(trainer, corpus, events, dist, log_every, resume, preview_every, cfg.seed)
            try:
                with view:
                    result = trainer.fit()
            except TrainingInterrupted as e:
                _report_stop(e, trainer, dist, corpus_args, cfg.out, encoding)
            finally:
                if metrics is not None:
                    metrics.close()  # the last step's record, also when training stopped early
        if not quiet and dist.is_main:
            _report_done(result, trainer)


def _observe(trainer, corpus, events, dist, log_every: int, resume: bool, preview_every: int, seed: int):
    """Hang rank 0's metrics.jsonl writer and sample previews on the trainer's events; returns the writer."""
    from charnn.training.metrics import MetricsLogger, run_config
    from charnn.training.preview import PairPreview, SamplePreview

    if not dist.is_main:
        return None
    metrics = events.add(MetricsLogger(trainer.run_dir, log_every, resume, run_config(trainer, corpus.source)))
    if preview_every and trainer.pairs is not None:
        events.add(PairPreview(trainer.model, trainer.source_tokenizer, trainer.tokenizer, trainer.pair_data.val_inputs,
                               trainer.device, preview_every, _print_preview, trainer.pairs["max_ratio"]))
    elif preview_every:
        events.add(SamplePreview(trainer.model, trainer.tokenizer, trainer.device, preview_every,
                                 _print_preview, seed=seed))
    return metrics


def _report_stop(e, trainer, dist, corpus_args: List[str], out: str, encoding: str):
    """A signal stopped training: say what was saved and the command that resumes it; exit 130 or 143."""
    code = 143 if e.signum == 15 else 130
    if e.path is None:
        err.print("[yellow]stopped before the first step; nothing was saved[/]", markup=True)
        raise typer.Exit(code) from None
    enc = f"--encoding {encoding} " if encoding.lower() not in ("utf-8", "utf8") else ""
    enc += f"--label-by {trainer.cfg.label_by} " if trainer.cfg.label_by else ""
    err.print(f"[yellow]stopped at step {trainer.step}; saved {e.path}. Resume with: {_launcher(dist)}charnn train "
              f"{''.join(_quote(a) for a in corpus_args)}--name {trainer.run_dir.name} "
              f"--out {shlex.quote(out)} {enc}--resume[/]", markup=True)
    raise typer.Exit(code) from None


def _report_done(result, trainer) -> None:
    bits = result.best_val_loss / math.log(2)
    err.print(f"done ({result.stopped}) after {result.steps} steps, {result.elapsed:.0f}s: best val "
              f"{result.best_val_loss:.4f} nats/char ({bits:.3f} bits/char) -> {result.run_dir / 'best.pt'}")
    print_curve(err, trainer.run_dir)
    if trainer.pairs is not None:
        err.print(f"use it with: charnn transduce {result.run_dir} inputs.txt  (one output line per input line)")
    else:
        err.print(f"sample it with: charnn sample {result.run_dir}")


@contextmanager
def _other_ranks_exit_quietly(dist):
    """Under torchrun only rank 0 speaks: any other rank that fails exits 1 without a traceback (rank 0 says
    what went wrong, or torchrun reports the rank). CHARNN_DEBUG=1 shows every rank's traceback."""
    try:
        yield
    except Exception as e:
        if dist.is_main or isinstance(e, typer.Exit) or debugging():
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
    err.rule(f"preview at step {step}", style="dim")
    err.print(text.rstrip("\n"), markup=False, highlight=False)


def _quote(path: str) -> str:
    return f"{shlex.quote(path)} " if path else ""
