"""A sequence-to-sequence model's attention over one input line: the line transduced greedily (as `charnn
transduce` does by default), then the output fed back teacher-forced to read, for each output character and
the end, its attention weights over the input characters and the input's end."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List

import numpy as np
import torch

from charnn.data.pairs import encode_side, pad_sources
from charnn.errors import CharnnError, chars_shown
from charnn.generation.seq2seq import Transducer
from charnn.sampling import TransduceConfig
from charnn.text.tokenizer import start_id


@dataclass
class AttentionMap:
    source: List[str]  # the input's characters, then "\n" for its end
    output: List[str]  # the output's characters, then "\n" for its end
    weights: np.ndarray  # (len(output), len(source)): row i, the weights while writing output[i]; rows sum to 1

    def to_dict(self) -> dict:
        return {"source": self.source, "output": self.output, "weights": self.weights.round(4).tolist()}


@torch.inference_mode()
def attention_map(model, source_tokenizer, tokenizer, line: str, device: torch.device, max_ratio: float = 4.0,
                  where: str = "the input line") -> AttentionMap:
    """The attention matrix of `line` transduced greedily (see the module's docstring); `where` names the line
    in errors (characters the model does not know)."""
    if not getattr(model.config, "attention", False):
        raise CharnnError("this sequence-to-sequence model has no attention (trained with --no-attention)")
    if not line.strip():
        raise CharnnError("`--attention` needs a non-blank input line")
    missing = source_tokenizer.unknown(line)
    if missing:
        raise CharnnError(f"{where}: {chars_shown(missing, 5)} not in the model's input characters")
    cfg = TransduceConfig(precision="fp32").validate()  # (the weights shown as they are)
    transducer = Transducer(model, source_tokenizer, tokenizer, cfg, device, max_ratio)
    (hyps,) = list(transducer.run([(line, where)]))
    output = hyps[0].text if hyps else ""
    src = transducer.encode(line, where)
    (tgt,) = encode_side(tokenizer, [output])
    x = torch.as_tensor(np.concatenate([[start_id(tokenizer)], tgt[:-1]]), device=device)[None]
    source = pad_sources([src])
    weights = model.eval().attention(x, (source[0].to(device), source[1]))[0].float().cpu().numpy()
    return AttentionMap(list(line) + ["\n"], list(output) + ["\n"], weights)
