"""Decoding an encoder-decoder: batched beam search (greedy is a beam of one), seeded sampling, and the
`Transducer` that turns input lines into output lines in length-sorted batches with the input order restored.

Beam search keeps K hypotheses per input in one batch of B*K rows. Each step scores every continuation of every
hypothesis, keeps the K best per input; a hypothesis that writes the end token is finished and leaves its beam.
An input is done when its best-scoring candidate of the step is finished (and it has `n_best` finished ones),
or at its length limit, where the end is forced; done inputs drop out of the batch, so long inputs do not keep
short ones' rows busy. Scores are sums of log-probabilities, divided by GNMT's length penalty
((5 + length) / 6) ** alpha when alpha > 0.

Nothing a row computes depends on the other rows (the encoder is packed, attention masks padding), so in fp32 an
input gets the same output whatever batch it is decoded in (in bf16, whose rounding can tip a near-tie, almost
always: charnn.generation.precision); sampling draws each input's noise as a stream of its own, seeded by the
run's seed and the input's position, for the same reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from charnn.sampling import DECODE_BATCH, DECODE_ROWS, SamplingParams, TransduceConfig
from charnn.data.pairs import END, pad_sources
from charnn.device import PrecisionChoice, autocast
from charnn.errors import CharnnError, chars_shown
from charnn.generation import precision
from charnn.generation.draw import filter_logits, gumbel_noise, temper
from charnn.models.seq2seq import Seq2Seq
from charnn.text.tokenizer import start_id
from charnn.threadwatch import block

EXTRA_LENGTH = 10  # the default length limit: the longest training ratio x 2 x (input + 1), plus this
LONG_INPUT = 8  # an input over this many times the longest trained on (at least 8 characters) gets a note


@dataclass
class Hypothesis:
    text: str
    logprob: float  # the model's log-probability of the output and its end (sampling: at temperature 1)
    score: float  # what the search ranks by: logprob, or logprob / length penalty


def _penalty(length: int, alpha: float) -> float:
    return ((5.0 + length) / 6.0) ** alpha if alpha else 1.0


@torch.inference_mode()
def search(model: Seq2Seq, source: Tuple[torch.Tensor, torch.Tensor], start: int, end: int, limits: Sequence[int],
           beam: int = 1, n_best: int = 1, alpha: float = 0.0, noise: Optional[List[torch.Tensor]] = None,
           sampling: Optional[SamplingParams] = None, precision: str = "fp32"
           ) -> List[List[Tuple[float, float, List[int]]]]:
    """For each input row: its n_best (score, logprob, token ids) finished outputs, best first. `limits`:
    output tokens allowed per row (the end included). `noise` (sampling, beam 1): per row, (limit, V) Gumbel
    noise added to the logits tempered and filtered by `sampling` (not greedy: a greedy output is searched).
    `precision`: the model's products in fp32 or bf16 (autocast); the scores are summed in fp32."""
    device = source[0].device
    B, K = source[0].shape[0], beam
    with autocast(device, precision):
        memory, state = model.encode(source)
    rep = torch.arange(B, device=device).repeat_interleave(K)
    memory, state = memory.grouped(K), model.state_ops.select(state, rep)  # (each input's memory read by its K rows)
    scores = torch.full((B, K), float("-inf"), device=device)
    scores[:, 0] = 0.0
    limits_t = torch.as_tensor(list(limits), dtype=torch.long)
    alive = torch.arange(B)  # the input row of each sentence still in the batch
    seqs = torch.zeros(B * K, 0, dtype=torch.long, device=device)
    x = torch.full((B * K, 1), start, dtype=torch.long, device=device)
    finished: List[List[Tuple[float, float, List[int]]]] = [[] for _ in range(B)]
    t = 0
    while len(alive):
        with autocast(device, precision):
            logits, state = model.decode(x, state, memory)
        logp = torch.log_softmax(logits[:, -1].float(), -1)  # (b*K, V)
        logp[:, 0] = float("-inf")  # id 0, the unknown character: no target has one, so it is never written
        b, V = len(alive), logp.shape[1]
        last = (limits_t[alive] <= t + 1).to(device)  # the limit: only the end may come now
        if last.any():
            forced = torch.full_like(logp, float("-inf"))
            forced[:, end] = logp[:, end]
            logp = torch.where(last.repeat_interleave(K)[:, None], forced, logp)
        if noise is None:
            cand = (scores.view(-1, 1) + logp).view(b, K * V)
            top, idx = cand.topk(K, dim=1)  # (b, K)
            origin, tok = idx // V, idx % V
        else:  # sampling: one row per input, the draw is argmax(tempered filtered logits + noise)
            keyed = filter_logits(temper(logits[:, -1].float(), sampling.temperature), sampling.top_k, sampling.top_p)
            keyed = torch.where(torch.isfinite(logp), keyed, torch.full_like(keyed, float("-inf")))
            keyed = keyed + torch.stack([noise[int(i)][t] for i in alive]).to(device)
            tok = keyed.argmax(-1, keepdim=True)
            origin = torch.zeros_like(tok)
            top = scores + logp.gather(1, tok)
        rows = (torch.arange(b, device=device)[:, None] * K + origin).view(-1)
        seqs = torch.cat([seqs.index_select(0, rows), tok.view(-1, 1)], 1)
        state = model.state_ops.select(state, rows)
        ended = (tok == end) & torch.isfinite(top)
        where = ended.nonzero().tolist()
        inputs = alive.tolist()  # plain ints: the bookkeeping below costs no tensor op per hypothesis
        if where:
            lps = top[ended].tolist()  # row-major, as nonzero() lists them
            outs = seqs[[i * K + k for i, k in where], :-1].tolist()
            for (i, _), lp, ids in zip(where, lps, outs):
                finished[inputs[i]].append((lp / _penalty(t + 1, alpha), lp, ids))
        top = top.masked_fill(tok == end, float("-inf"))
        counts = torch.tensor([len(finished[a]) for a in inputs])
        done = ((ended[:, 0].cpu() & (counts >= n_best)) | last.cpu() | ~torch.isfinite(top).any(1).cpu())
        keep = (~done).nonzero().view(-1)
        if len(keep) < b:
            keep_rows = (keep.to(device)[:, None] * K + torch.arange(K, device=device)).view(-1)
            alive, top = alive[keep], top[keep.to(device)]
            seqs, memory = seqs.index_select(0, keep_rows), memory.select(keep.to(device))
            state = model.state_ops.select(state, keep_rows)
            tok = tok.view(-1).index_select(0, keep_rows)
        scores = top
        x = tok.reshape(-1, 1)
        t += 1
    return [sorted(f, key=lambda h: -h[0])[:n_best] for f in finished]


class Transducer:
    """Input lines -> output lines with an encoder-decoder: the inputs encoded (unknown characters an error, or
    skipped), decoded in length-sorted batches, the results in input order."""

    def __init__(self, model: Seq2Seq, source_tokenizer, tokenizer, cfg: TransduceConfig, device: torch.device,
                 max_ratio: float = 4.0, exact_scores: bool = False, max_source: Optional[int] = None):
        """`exact_scores`: recompute each output's log-probability for its input alone (see `rescore`), so
        printed scores are the same whatever the batch; otherwise they are the search's sums. `max_source`: the
        longest training input, if known (`notes` names inputs far longer)."""
        self.model, self.src_tok, self.tok, self.cfg, self.device = model.eval(), source_tokenizer, tokenizer, cfg, device
        self.start = start_id(tokenizer)  # the newline: the decoder starts from it and ends with it
        self.src_end = start_id(source_tokenizer)
        self.max_ratio, self.exact_scores = max_ratio, exact_scores
        self.offset = 0  # lines seen so far: sampling seeds each input by its position in the whole input
        self.dropped, self.emptied = 0, []  # --unknown skip: characters dropped; inputs left with none (where)
        self.max_source, self.long, self.longest = max_source, 0, ("", 0)  # inputs over LONG_INPUT x the longest
        # trained on: how many, and the longest of them (where, characters)
        self.precision: Optional[PrecisionChoice] = None  # what the decode runs in: decided at the first batch

    def encode(self, text: str, where: str) -> Optional[np.ndarray]:
        """An input's ids and its end; characters outside the vocabulary are an error naming `where`
        (--unknown error) or dropped (--unknown skip; None when none is left: the output is a blank line, and
        `notes` says so)."""
        ids = self.src_tok.encode(text)
        if self.max_source and len(ids) > LONG_INPUT * max(self.max_source, 8):
            self.long += 1
            self.longest = max(self.longest, (where, len(ids)), key=lambda w: w[1])
        bad = ids == self.src_tok.unk_id
        if bad.any():
            if self.cfg.unknown == "error":
                shown = chars_shown(self.src_tok.unknown(text), 5)
                raise CharnnError(f"{where}: {shown} not in the model's input characters (`--unknown skip` drops them)")
            ids = ids[~bad]
            self.dropped += int(bad.sum())
            if not len(ids):
                self.emptied.append(where)
                return None
        return np.append(ids, self.src_end)

    def notes(self) -> List[str]:
        """For the user (empty when none): what --unknown skip did, inputs far longer than training's, and the
        precision auto measured (the first time for this model on this machine)."""
        out = []
        if self.precision is not None and self.precision.how == "measured":  # (once: then remembered)
            out.append(f"decoding in {self.precision.precision} ({self.precision.reason}; remembered for this model "
                       "on this machine; --precision fp32|bf16 chooses)")
        if self.long:  # (a 5,000-character line took 24 s, unexplained: attention reads every input step at each
            where, n = self.longest  # output step, and the output runs as long)
            out.append(f"{self.long:,} input line(s) far longer than any the model was trained on (the longest "
                       f"had {self.max_source:,} characters; {where} has {n:,}): such lines decode slowly (the time "
                       "grows with the square of their length) and their outputs are unreliable")
        if not self.dropped:
            return out
        out.append(f"dropped {self.dropped:,} input character(s) the model does not know (--unknown skip)")
        if self.emptied:
            shown = ", ".join(self.emptied[:5]) + (f" and {len(self.emptied) - 5} more" if len(self.emptied) > 5 else "")
            out.append(f"{len(self.emptied):,} input line(s) had no character the model knows and got a blank "
                       f"output line: {shown}")
        return out

    def limit(self, n: int) -> int:
        """Output tokens allowed for an input of n ids (its end included), the end included."""
        if self.cfg.max_length is not None:
            return self.cfg.max_length + 1
        return int(math.ceil(2 * self.max_ratio * n)) + EXTRA_LENGTH

    def decode(self, inputs: Sequence[np.ndarray], positions: Sequence[int]) -> List[List[Hypothesis]]:
        """Decode one batch of encoded inputs; `positions` (their places in the whole input) seed sampling."""
        c = self.cfg
        source = pad_sources(inputs)
        limits = [self.limit(len(s)) for s in inputs]
        rows, where, noise = list(range(len(inputs))), list(range(len(inputs))), None
        sampling = c.sampling
        if sampling is not None:  # n_best samples: each input n_best times, each copy with its own noise
            rows = [r for r in range(len(inputs)) for _ in range(c.n_best)]
            where = [positions[r] * c.n_best + j for r in range(len(inputs)) for j in range(c.n_best)]
            noise = [_noise(sampling.seed, w, limits[r], self.tok.vocab_size) for r, w in zip(rows, where)]
            source = (source[0][rows], source[1][rows])
            limits = [limits[r] for r in rows]
        src = (source[0].to(self.device), source[1])
        found = search(self.model, src, self.start, self.start, limits, 1 if sampling else c.beam,
                       1 if sampling else c.n_best, c.length_penalty, noise, sampling, self.precision.precision)
        out: List[List[Hypothesis]] = [[] for _ in inputs]
        for r, hyps in zip(rows, found):
            out[r] += [Hypothesis(self.tok.decode(ids), lp, score) for score, lp, ids in hyps]
        return out

    def rescore(self, encoded: np.ndarray, hyps: List[Hypothesis]) -> None:
        """Each hypothesis's log-probability recomputed for its input alone, teacher-forced: the search's sums
        come from batches whose makeup (and so the last bits of every matmul) depends on --batch-size, and
        printed scores must not."""
        from charnn.data.pairs import encode_side, pair_batch
        from charnn.scoring.rows import row_nats

        for h in hyps:
            x, y, source = pair_batch([encoded], encode_side(self.tok, [h.text]), self.start)
            h.logprob = -float(row_nats(self.model, x, y, None, self.device, "fp32", source)[0])

    def run(self, lines: Iterable[Tuple[str, str]]) -> Iterator[List[Hypothesis]]:
        """(text, where) input lines -> each one's hypotheses, in input order, decoded `batch_size` at a time
        sorted by length; a blank line gives no hypotheses (a blank output line)."""
        items = list(lines)
        encoded = [None if not text.strip() else self.encode(text, where) for text, where in items]
        results: List[Optional[List[Hypothesis]]] = [[] for _ in items]
        todo = sorted((i for i, e in enumerate(encoded) if e is not None), key=lambda i: len(encoded[i]))
        per_input = self.cfg.n_best if self.cfg.sampling is not None else self.cfg.beam
        B = max(1, min(self.cfg.batch_size, DECODE_ROWS // per_input))  # (a wide beam: fewer inputs at once)
        if self.precision is None and todo:  # (for the search's width at the default batch, whatever --batch-size
            full = max(1, min(DECODE_BATCH, DECODE_ROWS // per_input))  # is: an output does not depend on the batch)
            self.precision = precision.choose(self.cfg.precision, self.model, full, per_input, self.device)
        for lo in range(0, len(todo), B):
            chunk = todo[lo:lo + B]
            decoded = block(lambda: self.decode([encoded[i] for i in chunk], [self.offset + i for i in chunk]),
                            lambda _: sum(len(encoded[i]) for i in chunk))  # (charnn.threadwatch's threads)
            for i, hyps in zip(chunk, decoded):
                if self.exact_scores:
                    self.rescore(encoded[i], hyps)
                results[i] = hyps
        self.offset += len(items)
        return iter(results)


def _noise(seed: int, position: int, steps: int, vocab: int) -> torch.Tensor:
    """(steps, V) Gumbel noise of one input, a stream of its own (`draw.gumbel_noise`, the hashed noise that
    sampling from a language model uses): the same whatever the batch."""
    own = torch.tensor([(seed * 1_000_003 + position) % 2**63])
    return gumbel_noise(own, torch.zeros(1, dtype=torch.long), steps, vocab)[:, 0]


def join_line(hyps: List[Hypothesis], scores: bool = False) -> str:
    """One output line: the outputs tab-separated, each followed by its log-probability with `scores`."""
    if scores:
        return "\t".join(f"{h.text}\t{h.logprob:.4f}" for h in hyps)
    return "\t".join(h.text for h in hyps)


__all__ = ["END", "Hypothesis", "Transducer", "join_line", "search"]
