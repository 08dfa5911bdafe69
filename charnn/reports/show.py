"""`charnn show`'s numbers for one checkpoint and one text, gathered as plain data that the terminal view
(`charnn.cli.showview`) and the page (`charnn.reports.showpage`) both draw: the surprisal of every character,
the units that track the text's properties, the gradient's reach and a sequence-to-sequence model's attention."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch

from charnn.checkpoint import build_from_checkpoint, build_seq2seq, is_seq2seq, load_checkpoint
from charnn.errors import CharnnError, ConfigError
from charnn.models import registry
from charnn.inspect.activations import Activations, activations, encoder_activations, label_activations
from charnn.inspect.attention import AttentionMap, attention_map
from charnn.inspect.gradients import GradientReach, gradient_reach
from charnn.inspect.properties import PROPERTIES, at_tokens, rank_units, text_properties
from charnn.inspect.surprisal import Surprisal, surprisal

MAX_LABELS = 8  # --cells on a labelled model reads the text under at most this many labels
MIN_CELL_POINTS = 16  # --cells correlates over at least this many tokens read (over 2, every r is +-1)
ATTENTION_LINES = 20  # --attention draws at most this many lines


@dataclass
class ShowOptions:
    top_k: int = 5  # alternatives shown per character
    cells: bool = False  # rank the units by how well they track the text's properties
    units: int = 3  # units kept per property
    gradients: bool = False  # the gradient norm against k
    max_k: int = 100  # ... for k = 0..max_k
    positions: int = 64  # ... averaged over this many positions
    attention: bool = False  # a sequence-to-sequence model's attention, per input line
    label: Optional[str] = None  # a labelled model: read the text as this label

    def validate(self) -> "ShowOptions":
        for name in ("top_k", "units", "max_k", "positions"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        return self


@dataclass
class Unit:
    name: str  # "L1 c 17"
    r: float  # its correlation with the property
    values: np.ndarray  # (tokens,) its activation after each token shown


@dataclass
class Cells:
    prop: str  # the property's name
    about: str  # what it measures
    units: List[Unit]  # best first
    values: np.ndarray  # (tokens,) the property after each token shown


@dataclass
class ShowReport:
    name: str  # the run's name
    kind: str  # "lm", "seq2seq", or a classifier kind (its encoder's units only)
    tokens: List[str]  # the text as the views draw it, token by token
    surprisal: Optional[Surprisal] = None
    cells: Optional[List[Cells]] = None
    units: int = 0  # how many units the model has
    gradients: Optional[GradientReach] = None
    attention: List[AttentionMap] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)  # for stderr


def build_report(path: Path, text: str, options: ShowOptions, device: torch.device) -> ShowReport:
    """Load the checkpoint at `path` and gather what `options` asks for about `text`."""
    if not text:
        raise CharnnError("the text is empty: give a FILE, or pipe text in (`charnn show RUN -`)")
    data = load_checkpoint(path)
    name = path.parent.name if path.name in ("best.pt", "last.pt") else path.stem
    kind = registry.kind_of(data["model_config"])
    if options.label is not None and (is_seq2seq(data) or not kind.generates):  # (it was ignored)
        raise ConfigError(f"--label reads the text as a label of a language model trained with --label-by; a "
                          f"{'sequence-to-sequence' if is_seq2seq(data) else kind.name} model takes none")
    if is_seq2seq(data):
        return _seq2seq_report(data, name, text, options, device)
    if not kind.generates:  # nothing to score per character: a classifier answers with a label
        if not options.cells or options.gradients or options.attention:
            raise CharnnError(f"a {kind.name} model answers with labels (`charnn classify`); charnn show draws its "
                              "encoder's units with --cells alone")
        net, tokenizer = build_from_checkpoint(data, device)
        acts = encoder_activations(net, tokenizer, text, device, end=False)
        report = ShowReport(name, kind.name, acts.tokens)
        report.cells, report.units = rank_cells(acts, len(acts.tokens), options.units), acts.values.shape[1]
        return report
    if options.attention:
        raise CharnnError("--attention is for sequence-to-sequence models (`charnn train --pairs`); this is a "
                          "language model")
    net, tokenizer = build_from_checkpoint(data, device)
    labels = list((data.get("labels") or {}).get("names") or [])
    if options.label is not None:
        from charnn.scoring.classify import label_id
        net, labels = net.for_label(label_id(data.get("labels"), options.label)), []
    found = surprisal(net, tokenizer, text, device, options.top_k)
    report = ShowReport(name, "lm", found.tokens, surprisal=found)
    unknown = int((found.ids == tokenizer.unk_id).sum()) if tokenizer.unk_id is not None else 0
    if unknown:  # (as eval says: they were scored so without a word)
        report.notes.append(f"note: {unknown:,} character{'s are' if unknown != 1 else ' is'} not in the model's "
                            "vocabulary; scored as the unknown token")
    if options.cells:
        acts = (label_activations(net, tokenizer, text, device, labels[:MAX_LABELS]) if len(labels) > 1
                else activations(net, tokenizer, text, device))
        report.cells, report.units = rank_cells(acts, len(found.tokens), options.units), acts.values.shape[1]
        if len(labels) > MAX_LABELS:  # (it was silent)
            report.notes.append(f"--cells: the text read under the first {MAX_LABELS} of the model's {len(labels)} "
                                f"labels ({', '.join(str(x) for x in labels[:MAX_LABELS])})")
    if options.gradients:
        report.gradients = gradient_reach(net, tokenizer, text, device, options.max_k, options.positions)
    return report


def _seq2seq_report(data: dict, name: str, text: str, options: ShowOptions, device) -> ShowReport:
    if options.gradients:
        raise CharnnError("--gradients is for language models; for a sequence-to-sequence model use --cells "
                          "or --attention")
    if not (options.cells or options.attention):
        raise CharnnError("a sequence-to-sequence model has no surprisal of its input to show; use --cells (its "
                          "encoder's units) or --attention")
    if not text.strip():  # (nothing to draw: each section would be empty)
        raise CharnnError("the text has only blank lines; a sequence-to-sequence model reads one input per line")
    net, source_tokenizer, tokenizer = build_seq2seq(data, device)
    report = ShowReport(name, "seq2seq", [])
    if options.cells:
        acts = encoder_activations(net, source_tokenizer, text, device)
        report.tokens = acts.tokens
        report.cells, report.units = rank_cells(acts, len(acts.tokens), options.units), acts.values.shape[1]
    if options.attention:
        lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
        if len(lines) > ATTENTION_LINES:
            report.notes.append(f"--attention: the first {ATTENTION_LINES} of {len(lines):,} input lines")
        lines = lines[:ATTENTION_LINES]
        ratio = float((data.get("pairs") or {}).get("max_ratio", 4.0))
        report.attention = [attention_map(net, source_tokenizer, tokenizer, line, device, ratio, f"input line {n}")
                            for n, line in lines]
        if not report.tokens:
            report.tokens = [c for _, line in lines for c in line + "\n"]
    return report


def rank_cells(acts: Activations, shown: int, top: int) -> List[Cells]:
    """The `top` units per property (and, over several labelled runs, per label), each with its activation over
    the first `shown` tokens (the text as read once)."""
    if min(shown, len(acts.tokens)) < MIN_CELL_POINTS:  # (the text read once: a labelled model reads it once per
        # label, and 6 tokens read 3 times passed)
        raise CharnnError(f"--cells needs a text of at least {MIN_CELL_POINTS} tokens to correlate the units with "
                          f"(a correlation over {min(shown, len(acts.tokens))} is chance); give a longer text")
    props = {name: at_tokens(values, acts.tokens[:shown]) for name, values in text_properties(acts.text[:_chars(
        acts.tokens, shown)]).items()}
    runs = max(1, len(acts.tokens) // max(1, shown))
    props = {name: np.tile(values, runs) for name, values in props.items()}
    about = dict(PROPERTIES)
    for label in dict.fromkeys(acts.runs):
        props[f"label {label}"] = np.array([float(run == label) for run in acts.runs])
        about[f"label {label}"] = f"1 while the text is read as label {label}, else 0"
    out = []
    for ranked in rank_units(acts.values, props, top):
        units = [Unit(acts.names[u], r, acts.values[:shown, u]) for u, r in zip(ranked.units, ranked.r)]
        out.append(Cells(ranked.prop, about[ranked.prop], units, props[ranked.prop][:shown]))
    return out


def _chars(tokens: List[str], n: int) -> int:
    return sum(len(t) for t in tokens[:n])


def _rounded(values, digits: int = 4) -> list:
    return np.round(np.asarray(values, dtype=np.float64), digits).tolist()


def report_dict(report: ShowReport) -> dict:
    """The report as plain data (`charnn show --format json`, and what the page draws)."""
    out: dict = {"name": report.name, "kind": report.kind, "tokens": report.tokens, "units": report.units}
    s = report.surprisal
    if s is not None:
        out["surprisal"] = {"total": s.total, "nats": _rounded(s.nats),
                            "top": [[[t, round(p, 4)] for t, p in s.top(i)] for i in range(len(s.tokens))]}
    if report.cells is not None:
        out["cells"] = [{"property": c.prop, "about": c.about, "values": _rounded(c.values, 2),
                         "units": [{"name": u.name, "r": round(u.r, 4), "values": _rounded(u.values, 3)}
                                   for u in c.units]} for c in report.cells]
    g = report.gradients
    if g is not None:
        out["gradients"] = {"norms": [float(f"{v:.6g}") for v in g.norms],
                            "relative": [float(f"{v:.6g}") for v in g.relative], "positions": g.positions}
    if report.attention:
        out["attention"] = [m.to_dict() for m in report.attention]
    return out
