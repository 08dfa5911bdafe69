"""The model's surprisal at every token of a text (nats: -log p of the token given everything before it) and
its top alternatives, conditioned as `charnn eval` conditions a text: the first token on the start id, the
state carried through the whole text. On a text short enough for `eval` to score as one stream (under 4,096
tokens) the surprisals add up to its total nats exactly; a longer text `eval` splits into streams that each
start from a zero state, so there the two differ a little."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import numpy as np
import torch

from charnn.generation.prefill import forward_chunks
from charnn.generation.prompt import start_ids


@dataclass
class Surprisal:
    tokens: List[str]  # each token's text (a character model: the text's own characters)
    ids: np.ndarray  # (T,) the token ids
    nats: np.ndarray  # (T,) float64: -log p(token | all before it)
    top_ids: np.ndarray  # (T, k) the k most likely tokens at each position, most likely first
    top_logprobs: np.ndarray  # (T, k) float64: their log-probabilities
    pieces: List[str]  # the text of every id in the vocabulary (to name the alternatives)

    @property
    def total(self) -> float:
        return float(self.nats.sum())

    def top(self, i: int) -> List[Tuple[str, float]]:
        """Position i's alternatives: (token text, probability), most likely first."""
        return [(self.pieces[t], float(np.exp(lp))) for t, lp in zip(self.top_ids[i], self.top_logprobs[i])]


@torch.inference_mode()
def scan(model, tokenizer, ids: np.ndarray, device: torch.device, top_k: int = 1) -> Tuple[np.ndarray, ...]:
    """(log p of each id (T,), the top_k ids (T, k), their log-probabilities (T, k)) for `ids` read after the
    start id, a chunk at a time: memory does not grow with the text beyond the answer itself."""
    ids = np.asarray(ids, dtype=np.int64)
    k = max(1, min(top_k, tokenizer.vocab_size))
    picked = np.zeros(len(ids), dtype=np.float64)
    best, best_lp = np.zeros((len(ids), k), dtype=np.int64), np.zeros((len(ids), k), dtype=np.float64)
    context = np.concatenate([start_ids(tokenizer, ""), ids[:-1]])[:len(ids)]  # each token's input
    at = 0
    for out, _ in forward_chunks(model, context, None, device):
        logp = torch.log_softmax(out[0].float(), dim=-1)  # (T, V)
        n = logp.shape[0]
        target = torch.from_numpy(ids[at:at + n]).to(device)
        picked[at:at + n] = logp.gather(1, target[:, None])[:, 0].cpu().numpy()
        top_lp, top = logp.topk(k, dim=-1) if k > 1 else logp.max(dim=-1, keepdim=True)
        best[at:at + n], best_lp[at:at + n] = top.cpu().numpy(), top_lp.cpu().numpy()
        at += n
    return picked, best, best_lp


def token_texts(tokenizer, text: str, ids: np.ndarray) -> List[str]:
    """Each token's text, joined the text: a character model's are the text's characters (an unknown one keeps its
    own character, not the replacement mark); a subword model's the characters that start in each piece (a byte
    piece that continues a character is "": its character goes to the piece it starts in; each byte was shown as
    U+FFFD, and counted as a character)."""
    if getattr(tokenizer, "kind", "") == "char" and len(ids) == len(text):
        return list(text)
    counts = np.array([tokenizer.token_chars(ids[i:i + 1]) for i in range(len(ids))], dtype=np.int64)
    if int(counts.sum()) == len(text):
        return token_spans(counts, text)[0]
    return [tokenizer.decode([i]) for i in ids.tolist()]  # (each piece's text: not names(), which are for choices)


def token_spans(counts: np.ndarray, text: str) -> Tuple[List[str], List[int]]:
    """(each token's text, where it starts in `text`), from how many characters start in each token (a subword
    piece's decoded text would be U+FFFD for a byte of a character, and offsets summed from pieces drifted)."""
    begins = np.cumsum(counts) - counts
    offsets = np.where(counts == 0, np.maximum(begins - 1, 0), begins)  # (a continuation byte: its character's)
    return [text[b:b + c] for b, c in zip(begins.tolist(), counts.tolist())], offsets.tolist()


def surprisal(model, tokenizer, text: str, device: torch.device, top_k: int = 5) -> Surprisal:
    """Every token's surprisal and its `top_k` alternatives (see the module's docstring)."""
    was_training = model.training
    model.eval()
    ids = np.asarray(tokenizer.encode(text), dtype=np.int64)
    pieces = tokenizer.names()
    picked, best, best_lp = scan(model, tokenizer, ids, device, top_k)
    model.train(was_training)
    return Surprisal(token_texts(tokenizer, text, ids), ids, -picked, best, best_lp, pieces)
