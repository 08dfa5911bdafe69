"""`charnn train`: flags -> one assembled run (charnn.training.run) + progress, previews and messages -> fit,
under signals. The help groups the flags in panels: common, model, schedule and budget, labels, pairs, system."""

from __future__ import annotations

import copy
import math
import shlex
import time
from contextlib import contextmanager
from typing import Annotated, List, Optional, get_args

import typer

from charnn.cli.options import Device, Quiet
from charnn.cli.output import (debugging, err, import_torch, note_threads, print_curve, signal_exit_code,
                               user_errors)
from charnn.cli.kind_flags import with_model_flags
from charnn.config import PRECISIONS, TOKENIZERS

COMMON, MODEL, SCHEDULE = "Common", "Model", "Schedule and budget"
LABELS, PAIRS, SYSTEM = "Labels (--label-by)", "Pairs (--pairs)", "System"


def _in(panel: str, option, default=None):
    """A shared option type (charnn.cli.options) shown in this command's help under `panel`."""
    base, info = get_args(option)
    info = copy.copy(info)
    info.rich_help_panel = panel
    if default is not None:
        info.show_default = default
    return Annotated[base, info]


QuietHere, DeviceHere = _in(COMMON, Quiet, "off"), _in(SYSTEM, Device)


def train(
    corpus: Annotated[Optional[List[str]], typer.Argument(
        help="Text files and folders (read recursively), or a catalog name (see `charnn corpora`). Default: Python's "
             "standard library source, assembled offline (about 5 MB).", show_default=False)] = None,
    glob: Annotated[Optional[str], typer.Option(help="Inside folders, take only files matching this pattern, "
                                                     "e.g. '*.py'.", show_default="all files",
                                                rich_help_panel=COMMON)] = None,
    name: Annotated[Optional[str], typer.Option(help="Run name (default: the corpus file's stem).",
                                                show_default="the corpus's name", rich_help_panel=COMMON)] = None,
    out: Annotated[str, typer.Option(help="Root folder for runs.", rich_help_panel=COMMON)] = "checkpoints",
    val_frac: Annotated[float, typer.Option(help="Last fraction of the text held out for validation.",
                                            rich_help_panel=COMMON)] = 0.1,
    val_file: Annotated[Optional[str], typer.Option(help="Validate on this file (or catalog name) instead "
                                                         "(trains on all of CORPUS).",
                                                    show_default="none: the last --val-frac",
                                                    rich_help_panel=COMMON)] = None,
    tokenizer: Annotated[str, typer.Option(help=f"Tokens: {', '.join(TOKENIZERS)} (bpe/unigram: a sentencepiece "
                                                "model trained on the training split, up to 4M characters of "
                                                "it, stored in the checkpoint).", rich_help_panel=COMMON)] = "char",
    vocab_size: Annotated[Optional[int], typer.Option(help="Vocabulary size for bpe/unigram (at least 256 byte "
                                                           "pieces + 1 + the text's characters).",
                                                      show_default="1024 with bpe/unigram",
                                                      rich_help_panel=COMMON)] = None,
    seed: Annotated[int, typer.Option(help="Random seed.", rich_help_panel=COMMON)] = 1337,
    encoding: Annotated[str, typer.Option(help="Text encoding of CORPUS and --val-file.",
                                          rich_help_panel=COMMON)] = "utf-8",
    resume: Annotated[bool, typer.Option(help="Continue run NAME from its last.pt (its saved settings; "
                                              "flags given now, e.g. a larger --max-steps, override).",
                                         rich_help_panel=COMMON)] = False,
    init_from: Annotated[Optional[str], typer.Option(help="Fine-tune: start from this checkpoint or run folder's "
                                                          "weights, architecture and vocabulary (characters the "
                                                          "new text adds get new ids); fresh optimiser and "
                                                          "schedule; --lr defaults to 3e-3.",
                                                     show_default="none: from scratch", rich_help_panel=COMMON)] = None,
    log_every: Annotated[int, typer.Option(min=1, help="Steps between records in the run's metrics.jsonl "
                                                       "(evaluation steps are always recorded).",
                                           rich_help_panel=COMMON)] = 10,
    preview_every: Annotated[int, typer.Option(min=0, help="Every N steps, print a 200-character sample "
                                                           "(temperature 0.8) on stderr (--pairs: a few validation "
                                                           "inputs and their current outputs; 0: never).",
                                               rich_help_panel=COMMON)] = 0,
    quiet: QuietHere = False,
    batch_size: Annotated[Optional[int], typer.Option(help="Contiguous streams per batch, over all processes "
                                                           "under torchrun (the default is per process; --pairs: "
                                                           "pairs per batch).",
                                                      show_default="8 on the CPU, 256 on a CUDA GPU; --pairs: 32 "
                                                                   "on the CPU, 64 past 20,000 training pairs; "
                                                                   "--classifier: 64 texts on the CPU, 512 on a GPU; never more rows than the "
                                                                   "training data fills",
                                                      rich_help_panel=SCHEDULE)] = None,
    seq_len: Annotated[int, typer.Option(help="Characters per stream per step (BPTT length).",
                                         rich_help_panel=SCHEDULE)] = 128,
    lr: Annotated[float, typer.Option(help="Learning rate (AdamW) where the cosine decay starts; 3e-3 with "
                                           "--init-from or --cell mingru/minlstm.", rich_help_panel=SCHEDULE)] = 1e-2,
    warmup: Annotated[int, typer.Option(help="Linear warm-up steps (by default at most a quarter of --max-steps).",
                                        rich_help_panel=SCHEDULE)] = 50,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay on weight matrices.",
                                                rich_help_panel=SCHEDULE)] = 0.1,
    grad_clip: Annotated[float, typer.Option(help="Clip the global gradient norm to this (0: off).",
                                             rich_help_panel=SCHEDULE)] = 1.0,
    max_steps: Annotated[Optional[int], typer.Option(help="Stop after this many steps.",
                                                     show_default="none", rich_help_panel=SCHEDULE)] = None,
    max_time: Annotated[Optional[str], typer.Option(help="Time budget for the whole run: 300, 90s, 5m, 1h.",
                                                    show_default="none", rich_help_panel=SCHEDULE)] = None,
    epochs: Annotated[Optional[float], typer.Option(help="Stop after this many passes over the text.",
                                                    show_default="none", rich_help_panel=SCHEDULE)] = None,
    patience: Annotated[Optional[int], typer.Option(help="Stop after this many evaluations that leave the best "
                                                         "val loss less than 0.001 nats/char below where it stood "
                                                         "at the last real gain (--best-by wer: with no new best "
                                                         "WER). Given beside --max-steps/--max-time/--epochs, it "
                                                         "stops early within that limit.",
                                                    show_default="5 with no limit given; off beside one",
                                                    rich_help_panel=SCHEDULE)] = None,
    best_by: Annotated[str, typer.Option(help="What picks best.pt and counts --patience: loss (val nats/char), or "
                                              "wer (--pairs: the validation inputs decoded greedily at each "
                                              "evaluation, the share of words not exactly right). auto: wer with "
                                              "--pairs, else loss.", rich_help_panel=SCHEDULE)] = "auto",
    eval_every: Annotated[int, typer.Option(help="Steps between validation passes (and checkpoint saves).",
                                            rich_help_panel=SCHEDULE)] = 1000,
    eval_tokens: Annotated[int, typer.Option(help="Validation passes score the first this many validation tokens "
                                                  "(--label-by file or folder: a share of every label's); 0: all "
                                                  "of them.", rich_help_panel=SCHEDULE)] = 1_000_000,
    save_every_secs: Annotated[float, typer.Option(help="Also refresh last.pt after this many seconds without "
                                                        "a save (0: only at evaluations).",
                                                   rich_help_panel=SCHEDULE)] = 60.0,
    label_by: Annotated[Optional[str], typer.Option(help="Condition the model on labels: file (each CORPUS file is "
                                                         "a label, by its stem), folder (each subfolder of a CORPUS "
                                                         "folder), line (each line is label<TAB>text). Then "
                                                         "`sample --label` and `classify` work.",
                                                    show_default="none: no labels", rich_help_panel=LABELS)] = None,
    label_dropout: Annotated[float, typer.Option(help="With labels: the share of training windows shown without "
                                                      "their label (the unconditional path).",
                                                 rich_help_panel=LABELS)] = 0.1,
    label_contrast: Annotated[float, typer.Option(help="With labels: weight of a loss that raises each text's "
                                                       "likelihood under its own label above its likelihood "
                                                       "under other labels (sharper `classify`; a step costs "
                                                       "more).", rich_help_panel=LABELS)] = 0.0,
    label_negatives: Annotated[int, typer.Option(help="With --label-contrast: how many other labels each text is "
                                                      "compared with per step (each adds a forward pass of the "
                                                      "batch).", rich_help_panel=LABELS)] = 1,
    classifier: Annotated[bool, typer.Option("--classifier", help="With --label-by: train a classifier (a "
                                                                  "bidirectional encoder, its states pooled, a "
                                                                  "softmax over the labels; --kind classifier) "
                                                                  "instead of a label-conditioned language model. "
                                                                  "Its defaults: 1 layer x 64 hidden.",
                                             show_default="off", rich_help_panel=LABELS)] = False,
    class_weights: Annotated[str, typer.Option(help="--classifier: each label's weight in the loss: none, or "
                                                    "balanced (each label weighs as much, however many texts it "
                                                    "has).", rich_help_panel=LABELS)] = "none",
    skip_bad_lines: Annotated[bool, typer.Option("--skip-bad-lines", help="--label-by line / --pairs: skip and "
                                                                         "count lines that are not label<TAB>text "
                                                                         "(input<TAB>target).",
                                                 show_default="off", rich_help_panel=LABELS)] = False,
    pairs: Annotated[bool, typer.Option("--pairs", help="Sequence to sequence: every line of CORPUS is "
                                                        "input<TAB>target; trains an encoder-decoder for "
                                                        "`charnn transduce`.", show_default="off",
                                        rich_help_panel=PAIRS)] = False,
    device: DeviceHere = "auto",
    precision: Annotated[str, typer.Option(help=f"Autocast precision: {', '.join(PRECISIONS)} (auto: times a few "
                                                 "training steps in fp32 and bf16 where the hardware has native "
                                                 "bf16 and keeps the faster, remembered per machine and model "
                                                 "shape; weights and checkpoints stay fp32).",
                                           rich_help_panel=SYSTEM)] = "auto",
    threads: Annotated[Optional[int], typer.Option(help="CPU threads for torch. Default: measured, the count "
                                                        "whose training steps run fastest (1, 2, 4, ... up to the "
                                                        "cores), measured again when the step time jumps (another "
                                                        "process took or left a core). Give a number for bitwise "
                                                        "repeatable runs.",
                                                   show_default="measured", rich_help_panel=SYSTEM)] = None,
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the model's training forward "
                                                            "(opt-in; see benchmarks/TRAINING.md for when it "
                                                            "pays).", show_default="off",
                                          rich_help_panel=SYSTEM)] = False,
    *,  # (keyword-only, without a default: `ctx: typer.Context = None` is Optional[Context] to Python 3.10's type
    ctx: typer.Context,  # hints, which typer before 0.29 refuses; typer always passes it)
    **model_flags,  # --kind, --cell, --layers, ...: every registered model kind's flags (charnn.cli.kind_flags)
):
    """Train a model on CORPUS; checkpoints land in OUT/NAME/best.pt and last.pt."""
    with user_errors("train"):  # (a Ctrl-C held through the import comes out here: "interrupted", 130)
        import_torch()
    from charnn.cli.progress import TrainProgress
    from charnn.training.distributed import Dist
    from charnn.training.run import TRAIN_FLAGS, start_run, train_configs
    from charnn.training import stopping
    from charnn.training.trainer import StopRequest, TrainingInterrupted, graceful_signals

    started = time.perf_counter() - stopping.process_age()  # --max-time counts from the command's start, imports included
    flags = {**{k: v for k, v in locals().items() if k in TRAIN_FLAGS}, **model_flags,  # the run's configs' flags
             "resume": resume}
    given = _given_on_command_line(ctx)
    with user_errors("train"):
        dist = Dist.from_env()  # under torchrun: this process's rank; only rank 0 writes files and talks
    if not dist.is_main:
        err.quiet = True
    with _other_ranks_exit_quietly(dist), user_errors("train"), dist:
        model_cfg, cfg = train_configs(flags, "charnn train", given=given or ())
        note_threads(cfg.threads, quiet)
        stop = StopRequest()
        with graceful_signals(stop):
            view = TrainProgress(err, cfg.open_ended, quiet)
            corpus_args = list(corpus or [])
            _note_tab_separated(corpus_args, cfg, resume, quiet or not dist.is_main)
            run = start_run(corpus_args or None, model_cfg, cfg, view, encoding=encoding, glob=glob, resume=resume,
                            log_every=log_every, explicit=given, stop=stop, dist=dist,
                            loaded=view.download.close, started=started)
            if preview_every and dist.is_main:
                run.events.add(run.task.preview(run.trainer.model, run.trainer.device, preview_every, _print_preview,
                                                cfg.seed))
            try:
                with view:
                    result = run.fit()
            except TrainingInterrupted as e:
                _report_stop(e, run.trainer, dist, corpus_args, cfg.out, encoding, glob)
        if not quiet and dist.is_main:
            _report_done(result, run)


train = with_model_flags(train, MODEL, PAIRS, before="batch_size", pairs_before="device")


def _note_tab_separated(corpus_args: List[str], cfg, resume: bool, quiet: bool) -> None:
    """A language model about to train on a file of tab-separated pairs (`charnn train g2p.tsv`, --pairs left out):
    say what the flags would make of it, before the run starts."""
    from pathlib import Path

    from charnn.data.pairs import looks_like_pairs

    if quiet or resume or cfg.pairs or cfg.label_by or cfg.classifier:
        return
    first = next((a for a in corpus_args if Path(a).is_file()), None)
    if first and looks_like_pairs(first):
        err.print(f"note: the lines of {first} look like input<TAB>output pairs; this trains a language model on "
                  "the whole lines (add --pairs for a sequence-to-sequence model, or --label-by line for "
                  "label<TAB>text lines)", markup=False, highlight=False)


def _report_stop(e, trainer, dist, corpus_args: List[str], out: str, encoding: str, glob: Optional[str]):
    """A signal stopped training: say what was saved and the command that resumes it (every flag that decides which
    text it reads); exit 130 or 143 (129 for a closed terminal)."""
    code = signal_exit_code(e.signum)
    if e.path is None:
        err.print("[yellow]stopped before the first step; nothing was saved[/]", markup=True)
        raise typer.Exit(code) from None
    encoding = trainer.task.data_record.get("encoding") or encoding  # (a resumed run's own, where not typed)
    enc = f"--encoding {shlex.quote(encoding)} " if encoding.lower() not in ("utf-8", "utf8") else ""
    enc += f"--glob {shlex.quote(glob)} " if glob else ""
    enc += "--pairs " if trainer.cfg.pairs else ""
    enc += f"--label-by {trainer.cfg.label_by} " if trainer.cfg.label_by else ""
    enc += "--classifier " if trainer.cfg.classifier else ""
    done = f"saved {e.path}" if trainer.step > trainer.start_step else f"{e.path} is as it was (no step was trained)"
    err.print(f"[yellow]stopped at step {trainer.step}; {done}. Resume with: {_launcher(dist)}charnn train "
              f"{''.join(_quote(a) for a in corpus_args)}--name {shlex.quote(trainer.run_dir.name)} "
              f"--out {shlex.quote(out)} {enc}--resume[/]", markup=True)
    raise typer.Exit(code) from None


def _report_done(result, run) -> None:
    from charnn.reports.info import duration

    bits = result.best_val_loss / math.log(2)
    unit = "nats/text" if run.task.unit == "text" else f"nats/char ({bits:.3f} bits/char)"
    if not result.saved:  # (stopped before its first step, in the folder of an older run of the name)
        err.print(f"done ({result.stopped}) after {result.steps} steps, {result.elapsed:.0f}s: no step was trained, "
                  f"so {result.run_dir} is as it was (the older run of the name is kept; --resume continues it)")
    elif result.best_by == "wer":
        err.print(f"done ({result.stopped}) after {result.steps} steps, {result.elapsed:.0f}s: best val WER "
                  f"{100 * result.best_score:.2f}% (greedy; best val loss {result.best_val_loss:.4f} nats/char) -> "
                  f"{result.run_dir / 'best.pt'}")
    else:
        err.print(f"done ({result.stopped}) after {result.steps} steps, {result.elapsed:.0f}s: best val "
                  f"{result.best_val_loss:.4f} {unit} -> {result.run_dir / 'best.pt'}")
    if result.saved:
        print_curve(err, result.run_dir)
    trainer = run.trainer
    if result.stopped == "max_time" and result.steps == trainer.start_step:  # (it saved an untrained or unchanged
        before = (f", after the {duration(trainer.elapsed_before)} the run had trained before"  # model, saying "done")
                  if trainer.elapsed_before else "")
        evaluated = trainer.budget.eval_cost  # (its one evaluation, which a checkpoint needs, on a big model long)
        evaluated = f"; its evaluation {duration(evaluated)}" if evaluated else ""
        err.print(f"[yellow]note: --max-time {duration(trainer.cfg.max_time)} ran out before a training step: this "
                  f"start took {duration(result.elapsed - trainer.elapsed_before)} (loading and measuring{evaluated})"
                  f"{before}; give a longer --max-time, or train a smaller model[/]", markup=True)
    if run.task.kind == "classify":
        labels = run.task.labels
        err.print(f"held-out accuracy {labels.get('val_accuracy', 0):.4f}, macro-F1 {labels.get('val_macro_f1', 0):.4f} "
                  f"over {labels.get('val_texts', 0):,} texts (the last evaluation)")
        err.print(f"use it with: charnn classify {_quote(str(result.run_dir))}texts.txt  (one label per line)")
    elif run.task.kind == "pairs":
        err.print(f"use it with: charnn transduce {_quote(str(result.run_dir))}inputs.txt  (one output line per input "
                  "line)")
    else:
        err.print(f"sample it with: charnn sample {_quote(str(result.run_dir)).rstrip()}")  # (as the shell reads it)


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
        return f"torchrun --standalone --nproc-per-node {dist.world} -m "  # (as the README starts one)
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
    """A path as the shell passes it on, and not as an option (./-x), with a space after it."""
    return f"{shlex.quote('./' + path if path.startswith('-') else path)} " if path else ""
