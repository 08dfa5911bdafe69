"""What a checkpoint (or run folder) holds: model, tokenizer, training so far, format version.

`describe` returns plain data (the `--json` output); `summary_lines` turns it into text for people.
"""

from __future__ import annotations

import json
import math
from typing import List, Optional

from charnn.checkpoint import load_checkpoint, non_finite_tensors, resolve_checkpoint
from charnn.config import KINDS
from charnn.models import registry
from charnn.scoring.classify import per_label_table
from charnn.text.tokenizer import tokenizer_from_state
from charnn.training.metrics import CONFIG_FILE, METRICS_FILE, finite, read_metrics

VOCAB_PREVIEW = 48  # tokens shown in the vocabulary preview
LABELS_SHOWN = 20  # labels listed in the summary (--json has all)
_SHOWN = {"\n": "\\n", "\t": "\\t", "\r": "\\r", " ": "␠"}


def show_token(token: str) -> str:
    """A token as one visible word: whitespace and control characters escaped."""
    return "".join(_SHOWN.get(c, c if c.isprintable() else c.encode("unicode_escape").decode("ascii"))
                   for c in token) or "''"


def describe(path: Optional[str], root: str = "checkpoints") -> dict:
    """Everything `charnn info` reports about a .pt file or run folder (default: the newest run)."""
    ckpt = resolve_checkpoint(path, root)
    data = load_checkpoint(ckpt, finite=False)  # broken weights are shown (non_finite), not refused
    run_dir = ckpt.parent
    mc, tc = data["model_config"], data.get("train_config") or {}
    tok = tokenizer_from_state(data["tokenizer"])
    best = finite(data.get("best_val_loss"))
    config_path, metrics_path = run_dir / CONFIG_FILE, run_dir / METRICS_FILE
    config = _read_json(config_path)
    records = read_metrics(metrics_path)
    return {
        "checkpoint": str(ckpt), "run_dir": str(run_dir), "format": data.get("format"),
        "format_version": data.get("version"), "charnn_version": data.get("charnn_version"),
        "model": _model(data),
        "tokenizer": _vocabulary(tok),
        "seq2seq": _seq2seq(data) if mc.get("kind") == "seq2seq" else None,
        "training": {"steps": data.get("step"), "epoch": data.get("epoch"), "chars_seen": data.get("chars_seen"),
                     "unit": "text" if mc.get("kind") == "classifier" else "char",  # chars_seen and losses: per it
                     "elapsed": finite(data.get("elapsed")), "val_loss": finite(data.get("val_loss")),
                     "best_val_loss": best, "best_val_bits_per_char": None if best is None or mc.get("kind") ==
                     "classifier" else best / math.log(2),  # (a classifier's loss is nats per text: no bits per char)
                     "device": data.get("device"), "precision": data.get("precision"),
                     "batch_size": tc.get("batch_size"), "seq_len": tc.get("seq_len"), "lr": tc.get("lr"),
                     "seed": tc.get("seed"), "resumable": "optimizer" in data and "progress" in data,
                     "selection": data.get("selection")},  # --best-by wer: {by, score, best} (None: by loss)
        "non_finite": non_finite_tensors(data["model"]),  # [{name, nan, inf}]: sample and eval refuse these
        "corpus": config.get("corpus") or (data.get("data") or {}).get("corpus"),
        "labels": per_label_table(data["labels"]) if data.get("labels") else None,
        "label_by": (data.get("labels") or {}).get("by"),
        "held_out": _held_out(data.get("labels")),  # a classifier's: accuracy, macro-F1 (None: other kinds)
        "parent": data.get("parent"),  # --init-from: {path, step, val_loss, corpus, vocab_size, added_chars}
        "metrics": {"path": str(metrics_path), "records": len(records)} if records else None,
    }


def _held_out(labels) -> dict:
    """A classifier's (`train --classifier`) held-out accuracy and macro-F1 at its last evaluation, its window
    and class weights."""
    if not labels or "val_accuracy" not in labels:
        return None
    return {k: labels.get(k) for k in ("val_accuracy", "val_macro_f1", "val_texts", "window", "class_weights")}


def _model(data: dict) -> dict:
    """What the checkpoint's model kind shows (charnn.models.registry), and its size."""
    mc = data["model_config"]
    kind = registry.kind_of(mc)
    shown = {k: mc.get(k, 0 if k == "labels" else None) for k in kind.info_fields}
    return {**shown, **({"kind": kind.name} if kind.name not in KINDS else {}),
            "parameters": sum(t.numel() for t in data["model"].values())}


def _vocabulary(tok) -> dict:
    """Its kind, size and the first VOCAB_PREVIEW tokens: a subword vocabulary's learned pieces of two or more
    characters first (its first ids are single bytes and characters: \x00 \x01 ... said nothing)."""
    ids = [i for i in range(tok.vocab_size) if i != tok.unk_id]
    pieces = [tok.decode([i]) for i in ids]
    if tok.kind != "char":
        pieces = [p for p in pieces if len(p) > 1] + [p for p in pieces if len(p) <= 1]
    return {"kind": tok.kind, "vocab_size": tok.vocab_size, "preview": pieces[:VOCAB_PREVIEW],
            "spacing": getattr(tok, "spacing", None)}  # (subword, trained without spaces: how a space is written)


def _seq2seq(data: dict) -> dict:
    """An encoder-decoder's shape and both vocabularies (the "tokenizer" entry is the output's)."""
    mc = data["model_config"]
    return {"encoder": {"cell": mc["cell"], "layers": mc["layers"], "hidden": mc["hidden"],
                        "bidirectional": mc.get("bidirectional", True)},
            "decoder": {"cell": mc["cell"], "layers": mc["layers"], "hidden": mc["hidden"]},
            "attention": (("bahdanau-additive" if mc.get("attention_score") == "additive" else "luong-general")
                          if mc.get("attention", True) else None),
            "input_vocabulary": _vocabulary(tokenizer_from_state(data["source_tokenizer"])),
            "pairs": data.get("pairs")}


def duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return "?"
    if seconds < 60:
        return f"{seconds:.1f}s"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def _num(x, spec: str = ",") -> str:
    return "?" if x is None else format(x, spec)


def _bad_values(b: dict) -> str:
    return ", ".join(f"{b[k]:,} {k}" for k in ("nan", "inf") if b[k])


_SPACING = {"byte": "; no space piece: a space is its byte piece",
            "marker": "; no space piece: a space is the marker's bytes (the rule before 2026-12-07, kept on resume)"}


def summary_lines(info: dict) -> List[str]:
    m, t, tr = info["model"], info["tokenizer"], info["training"]
    shown = " ".join(show_token(p) for p in t["preview"])
    more = t["vocab_size"] - 1 - len(t["preview"])
    s2s = info.get("seq2seq")
    lines = [
        f"checkpoint  {info['checkpoint']}  (format {info['format']} v{info['format_version']}, "
        f"written by charnn {info['charnn_version'] or '?'})",
        f"model       {_model_words(m)}: {m['parameters']:,} parameters" if not s2s else _seq2seq_line(m, s2s),
        f"{'tokenizer' if not s2s else 'output':<11} {t['kind']}, {t['vocab_size']} tokens: {shown}"
        + (f" (+{more} more)" if more > 0 else "") + _SPACING.get(t.get("spacing"), ""),
        f"training    {_num(tr['steps'])} step{'s' * (tr['steps'] != 1)} ({_num(tr['epoch'])} "
        f"epoch{'s' * (tr['epoch'] != 1)} done), {_num(tr['chars_seen'])} "
        f"{'texts' if tr.get('unit') == 'text' else 'characters'} seen, {duration(tr['elapsed'])} on "
        f"{tr['device'] or '?'} ({tr['precision'] or '?'})",
    ]
    if tr["best_val_loss"] is not None:
        here = f"; this checkpoint {tr['val_loss']:.4f}" if tr["val_loss"] is not None else ""
        if tr.get("unit") == "text":
            lines.append(f"            best val {tr['best_val_loss']:.4f} nats/text{here}")
        else:
            lines.append(f"            best val {tr['best_val_loss']:.4f} nats/char = "
                         f"{tr['best_val_bits_per_char']:.3f} bits/char{here}")
    sel = tr.get("selection")
    if sel and sel.get("by") == "wer":
        lines.append(f"            picked by val WER (greedy): best {100 * sel['best']:.2f}%; this checkpoint "
                     f"{100 * sel['score']:.2f}%")
    if s2s:
        v = s2s["input_vocabulary"]
        more_in = v["vocab_size"] - 1 - len(v["preview"])
        lines.insert(2, f"input       {v['kind']}, {v['vocab_size']} tokens: {' '.join(show_token(p) for p in v['preview'])}"
                        + (f" (+{more_in} more)" if more_in > 0 else ""))
        pairs = s2s.get("pairs") or {}
        if pairs:
            lines.append(f"pairs       {_num(pairs.get('train_pairs'))} training, {_num(pairs.get('val_pairs'))} "
                         f"validation; targets up to {pairs.get('max_ratio', 0):.2f}x their input's length")
    if tr["batch_size"] is not None:
        unit = "pairs" if s2s else (f"texts of up to {tr['seq_len']} tokens" if tr.get("unit") == "text"
                                    else f"x {tr['seq_len']} {'chars' if t['kind'] == 'char' else 'tokens'}")
        lines.append(f"            batch {tr['batch_size']} {unit}, lr {tr['lr']:g}, seed {tr['seed']}"
                     + ("; resumable (optimiser state inside)" if tr["resumable"] else ""))
    broken = info.get("non_finite") or []
    if broken:
        shown = ", ".join(f"{b['name']} ({_bad_values(b)})" for b in broken)
        lines.append(f"not finite  {len(broken)} weight tensor{'s' if len(broken) > 1 else ''}: {shown}; "
                     "sample and eval refuse this checkpoint")
    if info["corpus"]:
        lines.append(f"corpus      {info['corpus']}")
    held = info.get("held_out")
    if held:
        lines.append(f"labels      {len(info['labels'])} by {info['label_by']} (training characters): "
                     + ", ".join(f"{name} ({_num(v['train_chars'])})"
                                 for name, v in list(info["labels"].items())[:LABELS_SHOWN])
                     + (f" and {len(info['labels']) - LABELS_SHOWN} more" if len(info["labels"]) > LABELS_SHOWN else ""))
        lines.append(f"held out    accuracy {held['val_accuracy']:.4f}, macro-F1 {held['val_macro_f1']:.4f} over "
                     f"{_num(held['val_texts'])} texts (windows of {held['window']} tokens; class weights "
                     f"{held['class_weights']})")
    elif info.get("labels"):
        lines.append(f"labels      {len(info['labels'])} by {info['label_by']} (training characters, val nats/char): "
                     + ", ".join(f"{name} ({_num(v['train_chars'])}, {_num(v['val_nats_per_char'], '.3f')})"
                                 for name, v in list(info["labels"].items())[:LABELS_SHOWN])
                     + (f" and {len(info['labels']) - LABELS_SHOWN} more" if len(info["labels"]) > LABELS_SHOWN else ""))
    if info.get("parent"):
        lines.append(f"parent      {parent_words(info['parent'])}")
    if info["metrics"]:
        lines.append(f"metrics     {info['metrics']['path']} ({info['metrics']['records']} records)")
    return lines


def _model_words(m: dict) -> str:
    """The kind's own words for its model (charnn.models.registry), or its settings as they are."""
    kind = registry.get(m.get("kind", "lm"))
    shown = {k: v for k, v in m.items() if k != "parameters"}
    return kind.info_line(shown) if kind.info_line else f"{kind.name}: " + ", ".join(
        f"{k} {v}" for k, v in shown.items() if k != "kind")


def _layers(side: dict) -> str:
    return f"{side['layers']} layer{'s' * (side['layers'] != 1)} x {side['hidden']}"


def _seq2seq_line(m: dict, s2s: dict) -> str:
    enc, dec = s2s["encoder"], s2s["decoder"]
    scores = {"luong-general": "Luong, general score", "bahdanau-additive": "Bahdanau's additive score"}
    attention = f"with attention ({scores[s2s['attention']]})" if s2s["attention"] else "without attention"
    return (f"model       sequence to sequence: {'bidirectional' if enc['bidirectional'] else 'unidirectional'} "
            f"{enc['cell']} encoder, {_layers(enc)} -> {dec['cell']} decoder, {_layers(dec)}, {attention}; embed {m['embed']}, dropout {m['dropout']}: "
            f"{m['parameters']:,} parameters")


def _read_json(path) -> dict:
    """A run's config.json, or {} when it is missing or damaged (info shows what the checkpoint holds)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def parent_words(parent: dict) -> str:
    """A fine-tuning run's parent in words: "checkpoints/kjv/best.pt (step 3,000, val 1.4100 nats/char); added 3
    characters: é ß €" (`info`, and the first line of `charnn train --init-from`)."""
    val = f", val {parent['val_loss']:.4f} nats/char" if parent.get("val_loss") is not None else ""
    added = parent.get("added_chars") or ""
    more = f" and {len(added) - VOCAB_PREVIEW} more" if len(added) > VOCAB_PREVIEW else ""
    news = (f"; added {len(added)} character{'s' if len(added) != 1 else ''}: "
            f"{' '.join(show_token(c) for c in added[:VOCAB_PREVIEW])}{more}" if added else "; no new characters")
    if parent.get("byte_chars") is not None and parent.get("text_chars"):  # (a subword base: its pieces spell any
        # character, some in bytes)
        spelled, chars = parent["byte_chars"], parent.get("text_chars") or 0
        share = f"{100 * spelled / max(1, chars):.3g}%"
        news = (f"; {spelled:,} of the training text's {chars:,} characters ({share}) are not in its pieces: spelled "
                "in bytes" if spelled else "; every character of the training text is in its pieces")
    return f"{parent['path']} (step {_num(parent.get('step'))}{val}){news}"
