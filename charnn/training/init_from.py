"""Fine-tuning (`--init-from`): start a new run from another run's weights, architecture and vocabulary.

The base's token ids keep their meaning. A character model's vocabulary is extended by the characters the
new training text adds (new rows in the embedding and the head, appended after the base's ids); a subword
model's sentencepiece model is reused as it is (byte fallback covers any text). The optimiser and the
learning-rate schedule start fresh.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import torch

from charnn.checkpoint import PREVIOUS, is_seq2seq, load_checkpoint, resolve_checkpoint, run_checkpoints
from charnn.config import ModelConfig, TrainConfig
from charnn.errors import CharnnError, ConfigError, weights_problem
from charnn.models import registry

FINETUNE_LR = 3e-3  # the default peak learning rate when fine-tuning (measured: benchmarks/ADAPT.md)
ARCHITECTURE = registry.get("lm").architecture  # what the base keeps (--init-from fine-tunes language models)


@dataclass
class Parent:
    """The run a fine-tuning run starts from: what to load, and what the new run records about it."""

    path: Path
    data: dict  # the loaded checkpoint
    model_cfg: ModelConfig
    added: List[str] = field(default_factory=list)  # characters the new text added to the vocabulary

    @property
    def tokenizer_state(self) -> dict:
        """The base's tokenizer, for the new run: a subword one spaces as charnn does now. A base saved before
        wrote a space as the marker's bytes; one trained on text without spaces (the case where that differs)
        never learned them; one that was itself fine-tuned on spaced text had, and its new run learns spaces anew."""
        state = self.data["tokenizer"]
        return {**state, "space": "byte"} if isinstance(state, dict) and state.get("kind") != "char" else state

    def record(self) -> dict:
        """What the checkpoint, config.json and `charnn info` say about the parent."""
        val = self.data.get("val_loss", self.data.get("best_val_loss"))  # (this checkpoint's: a last.pt's own)
        return {"path": str(self.path), "step": self.data.get("step"),
                "val_loss": val if isinstance(val, float) and math.isfinite(val) else None,
                "corpus": (self.data.get("data") or {}).get("corpus"),
                "vocab_size": self.model_cfg.vocab_size, "added_chars": "".join(self.added)}


def load_parent(path: str, model_cfg: ModelConfig, cfg: TrainConfig, explicit: Optional[set],
                run_dir: Path) -> Parent:
    """Load the base checkpoint and check the flags given now against it: architecture and tokenizer flags
    that contradict the base are one error naming them all. `explicit` holds the flags typed (None: all)."""
    ckpt = resolve_checkpoint(path)
    folder = ckpt.parent.resolve()
    where = ("the new run's own folder" if folder == run_dir.resolve() else
             "the folder this run's first save replaces (the run now in its folder moves there)"
             if folder == (run_dir / PREVIOUS).resolve() and run_checkpoints(run_dir) else "")
    if where:  # (previous/: a base fine-tuned from there was overwritten, and the run's recorded parent was wrong)
        raise ConfigError(f"--init-from {path} is in {where} {str(folder)!r}; training there would replace it. Give "
                          "the new run another --name")
    data = load_checkpoint(ckpt)
    if is_seq2seq(data):
        raise ConfigError(f"--init-from {path} is a sequence-to-sequence (--pairs) model; --init-from fine-tunes "
                          "language models")
    # a classifier parent: into a language model it was a traceback; into a classifier an LSTM one was a KeyError
    # and a min-cell one was dropped for a fresh LSTM while the run said "fine-tuning from"
    if data["model_config"].get("kind") == "classifier":
        raise ConfigError(f"--init-from {path} is a classifier (trained with `--classifier`); --init-from starts "
                          "from a language model (a classifier takes its embedding); continue a classifier with "
                          "--resume")
    base = ModelConfig.from_saved(data["model_config"]).validate()
    # what the new run keeps of the base: its architecture, or what its own kind says it takes (a classifier
    # takes the embedding, and the encoder's first layer where the shapes match)
    kept = registry.get(model_cfg.kind).extra.get("init_keeps") or registry.kind_of(data["model_config"]).architecture
    typed = set(vars(model_cfg)) | set(vars(cfg)) if explicit is None else set(explicit)
    problems = [f"--{k} {model_cfg.value(k)} (the base has {base.value(k)})"
                for k in kept if k in typed and model_cfg.value(k) != base.value(k)]
    kind = data["tokenizer"].get("kind")
    if "tokenizer" in typed and cfg.tokenizer != kind:
        problems.append(f"--tokenizer {cfg.tokenizer} (the base uses {kind})")
    saved = data.get("train_config") if isinstance(data.get("train_config"), dict) else {}
    was = TrainConfig(tokenizer=saved.get("tokenizer", "char"), vocab_size=saved.get("vocab_size")).pieces
    if "vocab_size" in typed and cfg.vocab_size is not None and cfg.vocab_size != was:  # (the base's own: taken)
        problems.append(f"--vocab-size {cfg.vocab_size} (the base's vocabulary is reused"
                        f"{f'; it was trained with {was}' if was else ''})")
    if problems:
        raise ConfigError(f"--init-from {path} keeps the base model's architecture and tokenizer; it cannot "
                          f"take {', '.join(problems)}. Drop those flags")
    dropout = model_cfg.dropout if "dropout" in typed else base.dropout
    # the training-time regularisers are this run's (its flags, or its kind's defaults), not the base's
    regs = {f.name: model_cfg.value(f.name) for f in registry.REGULARISER_FLAGS if model_cfg.value(f.name) is not None}
    return Parent(ckpt, data, ModelConfig.from_saved({"vocab_size": base.vocab_size, "dropout": dropout,
                                                      "kind": base.kind, **regs, **{k: base.value(k) for k in kept}}))


def graft(model: torch.nn.Module, parent: Parent, seed: int, labels: Optional[List[str]] = None) -> None:
    """Load the parent's weights into `model`, whose vocabulary may be larger: the base's rows are copied,
    a new character's embedding row is drawn as a fresh model's are, and its head row starts as the
    unknown token's (a token the base learned to find unlikely), so adding characters changes the base's
    predictions very little until training teaches the new ones. A label of the new run (`labels`, its
    names) that the base was trained on keeps the base's vectors; other labels start fresh."""
    state = {k: v for k, v in parent.data["model"].items() if not k.startswith(("label_embed", "label_out"))}
    base_labels = list((parent.data.get("labels") or {}).get("names") or [])
    for name in ("label_embed", "label_out"):
        if getattr(model, name, None) is None:
            continue
        weight = getattr(model, name).weight.detach().clone()  # row 0 is "no label", rows 1.. the labels
        old = parent.data["model"].get(f"{name}.weight")
        for i, label in enumerate(labels or []):
            if old is not None and label in base_labels:
                weight[i + 1] = old[base_labels.index(label) + 1]
        state[f"{name}.weight"] = weight
    n = parent.model_cfg.vocab_size
    new = model.embed.weight.shape[0] - n
    if new > 0:
        g = torch.Generator().manual_seed(seed)
        extra = torch.randn(new, state["embed.weight"].shape[1], generator=g)
        state["embed.weight"] = torch.cat([state["embed.weight"], extra])
        state["head.weight"] = torch.cat([state["head.weight"], state["head.weight"][:1].expand(new, -1)])
        state["head.bias"] = torch.cat([state["head.bias"], state["head.bias"][:1].expand(new)])
    try:
        model.load_state_dict(state)
    except RuntimeError as e:  # (a damaged base: it was a traceback here, one line in sample and eval)
        raise CharnnError(f"--init-from {str(parent.path)!r}: its weights do not fit its own model config: "
                          f"{weights_problem(e)}") from None
