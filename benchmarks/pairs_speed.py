"""What makes `--pairs` training fast on a CPU (issue 36): each choice the trainer makes, against the way it could
have been done instead, timed on the same model, data and machine in alternating rounds.

    python benchmarks/pairs_speed.py --data ../data/sigmorphon21/eng_us_train.tsv      # a real dictionary
    python benchmarks/pairs_speed.py                                                   # synthetic words

One training step is forward + backward + AdamW on a batch of `--batch-size` pairs of the default model (2 x 256
LSTM, attention), in the precision named. The rows:

- charnn: what `charnn train --pairs` does: batches of similar length (charnn.data.pairs.PairBatches), the
  bidirectional encoder in one packed call, the decoder over the whole target in one call (no input feeding),
  the loss on the real targets only (padding is IGNORE)
- random batches: the same, but pairs batched in random order (more of every batch is padding)
- decoder step by step: the decoder called once per target position (what input feeding would force)
- encoder in two calls: per layer, the two directions as two one-way calls (the second on each row reversed within
  its length), with the model's own weights: the same encoder, called differently
- fp32 / bf16: the precision (autocast; `--precision auto` measures which is faster per machine)

"real chars/s" counts the targets' real tokens (what the loss is over), so padding costs show there. Prints a
markdown table and writes benchmarks/results/pairs_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import cpu_features, cpu_name  # noqa: E402

from charnn.models.configs import Seq2SeqConfig  # noqa: E402
from charnn.data.batches import IGNORE  # noqa: E402
from charnn.data.pairs import PairBatches, build_vocabularies, encode_side, pair_batch, read_pairs  # noqa: E402
from charnn.device import autocast  # noqa: E402
from charnn.models.encoder import encode_packed, padding_mask  # noqa: E402
from charnn.models.seq2seq import Memory, Seq2Seq  # noqa: E402
from charnn.text.tokenizer import start_id  # noqa: E402


def synthetic(n: int) -> list:
    rng = random.Random(0)
    out = []
    for _ in range(n):
        w = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 14)))
        out.append((w, " ".join(reversed(w))))
    return out


def batches(pairs, batch_size: int, steps: int, ordered: bool):
    """`steps` batches: PairBatches' length-grouped plan, or random draws."""
    src_tok, tgt_tok = build_vocabularies([type("P", (), {"source": s, "target": t})() for s, t in pairs])
    src, tgt = encode_side(src_tok, [s for s, _ in pairs]), encode_side(tgt_tok, [t for _, t in pairs])
    start = start_id(tgt_tok)
    if ordered:
        plan = PairBatches(src, tgt, batch_size, start).plan(1)[:steps]
    else:
        rng = np.random.default_rng(1)
        plan = [rng.choice(len(tgt), batch_size, replace=False) for _ in range(steps)]
    out = [pair_batch([src[i] for i in rows], [tgt[i] for i in rows], start) for rows in plan]
    return out, src_tok.vocab_size, tgt_tok.vocab_size


class TwoCallEncoder(torch.nn.Module):
    """The model's own bidirectional encoder run as one-way calls: per layer, left to right on the packed inputs and
    right to left on each row reversed within its own length, the two outputs joined as the next layer's input
    (what one bidirectional call computes: the same function of the same weights; main() checks the outputs
    agree). The weights are the model's own parameters, so the optimiser trains them as in the charnn row. (The
    first version of this row ran two separate one-way stacks, whose second layers read H rather than 2H inputs:
    a lighter model, not this one.)"""

    def __init__(self, encoder: torch.nn.LSTM):
        super().__init__()
        self.encoder = [encoder]  # not a submodule: its parameters are the model's
        H = encoder.hidden_size
        self.templates = [torch.nn.LSTM(encoder.input_size if l == 0 else 2 * H, H, 1, batch_first=True)
                          for l in range(encoder.num_layers)]

    def forward(self, e: torch.Tensor, lengths: torch.Tensor):
        from torch.func import functional_call
        from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

        enc, S = self.encoder[0], e.shape[1]
        idx = torch.where(torch.arange(S)[None] < lengths[:, None], lengths[:, None] - 1 - torch.arange(S)[None],
                          torch.arange(S)[None])  # each row reversed within its length (its own inverse)
        pack = lambda t: pack_padded_sequence(t, lengths, batch_first=True, enforce_sorted=False)  # noqa: E731
        unpack = lambda p: pad_packed_sequence(p, batch_first=True, total_length=S)[0]  # noqa: E731
        flip = lambda t: t.gather(1, idx[:, :, None].expand(-1, -1, t.shape[2]))  # noqa: E731
        x, hs, cs = e, [], []
        for layer, template in enumerate(self.templates):
            if layer and enc.dropout and enc.training:
                x = F.dropout(x, enc.dropout, True)
            outs = []
            for tag in ("", "_reverse"):
                weights = {f"{n}_l0": getattr(enc, f"{n}_l{layer}{tag}")
                           for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
                out, (h, c) = functional_call(template, weights, (pack(flip(x) if tag else x),))
                out = unpack(out)
                outs.append(flip(out) if tag else out)
                hs.append(h)
                cs.append(c)
            x = torch.cat(outs, -1)
        return x, (torch.cat(hs), torch.cat(cs))  # (B, S, 2H), zeros at padding; (layers * 2, B, H) as torch orders


def loss_of(model: Seq2Seq, x, y, source, how: str, two_call=None):
    if how == "decoder step by step":
        memory, state = model.encode(source)
        logits = []
        for t in range(x.shape[1]):
            step, state = model.decode(x[:, t:t + 1], state, memory)
            logits.append(step)
        logits = torch.cat(logits, 1)
    elif how == "encoder in two calls":
        ids, lengths = source
        out, final = two_call(model.drop(model.src_embed(ids)), lengths)
        state = tuple(model._bridge(f, i) for i, f in enumerate(final))
        kept = model.drop(out)
        memory = Memory(kept, padding_mask(lengths, ids.shape[1], ids.device), model._keys(kept))
        logits, _ = model.decode(x, state, memory)
    else:
        logits, _ = model(x, None, source=source)
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=IGNORE)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None, help="input<TAB>target file (default: synthetic words)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10, help="steps per row per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "pairs_speed.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pairs = ([(p.source, p.target) for p in read_pairs(Path(args.data)).pairs] if args.data else synthetic(30000))
    n = args.steps * args.rounds
    ordered, sv, tv = batches(pairs, args.batch_size, n, True)
    shuffled, _, _ = batches(pairs, args.batch_size, n, False)
    cfg = Seq2SeqConfig(vocab_size=tv, source_vocab=sv)
    torch.manual_seed(0)
    model = Seq2Seq(cfg).train()
    two_call = TwoCallEncoder(model.encoder)
    with torch.no_grad():  # the same function of the same weights as the one bidirectional call
        model.eval()
        x, y, source = ordered[0]
        e = model.src_embed(source[0])
        want, (want_h, _) = encode_packed(model.encoder, e, source[1])
        got, (got_h, _) = two_call(e, source[1])
        assert torch.allclose(want, got, atol=1e-5) and torch.allclose(want_h, got_h, atol=1e-5), "not the same encoder"
        model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    bf16 = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    rows = [("charnn", ordered, "fp32"), ("random batches", shuffled, "fp32"),
            ("decoder step by step", ordered, "fp32"), ("encoder in two calls", ordered, "fp32")]
    if bf16:
        rows += [("charnn", ordered, "bf16"), ("random batches", shuffled, "bf16")]
    times = {(name, prec): [] for name, _, prec in rows}
    real = {(name, prec): 0 for name, _, prec in rows}
    padded = {(name, prec): 0 for name, _, prec in rows}
    for r in range(args.rounds):
        for name, data, prec in rows:
            chunk = data[r * args.steps:(r + 1) * args.steps]
            for timed in (False, True):  # an untimed pass first: oneDNN builds its kernels per new shape, and the
                t0 = time.perf_counter()  # row that met a round's shapes first would pay for every row
                for x, y, source in chunk:
                    with autocast(torch.device("cpu"), prec):
                        loss = loss_of(model, x, y, source, name, two_call)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
            times[(name, prec)].append((time.perf_counter() - t0) / len(chunk))
            if r == 0:
                real[(name, prec)] = sum(int((y != IGNORE).sum()) for _, y, _ in chunk) / len(chunk)
                padded[(name, prec)] = sum(y.numel() for _, y, _ in chunk) / len(chunk)
    base = statistics.median(times[("charnn", "fp32")])
    result = {"cpu": cpu_name(), "cpu_features": cpu_features(), "torch": torch.__version__, "threads": args.threads,
              "load": os.getloadavg(), "data": args.data or "synthetic", "pairs": len(pairs),
              "batch_size": args.batch_size, "parameters": sum(p.numel() for p in model.parameters()), "rows": []}
    print(f"{result['cpu']} ({result['cpu_features']}), torch {result['torch']}, {args.threads} threads, load "
          f"{result['load'][0]:.2f}; {result['data']} ({len(pairs):,} pairs), batch {args.batch_size}, default "
          f"2 x 256 model; median of {args.rounds} rounds x {args.steps} steps\n")
    print("| row | precision | ms/step | vs charnn fp32 | real target chars/s | target padding |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for name, _, prec in rows:
        ms = statistics.median(times[(name, prec)])
        rate = real[(name, prec)] / ms
        pad = 1 - real[(name, prec)] / max(1, padded[(name, prec)])
        result["rows"].append({"row": name, "precision": prec, "ms_per_step": 1000 * ms, "vs_charnn_fp32": ms / base,
                               "real_chars_per_s": rate, "rounds_s": times[(name, prec)]})
        print(f"| {name} | {prec} | {1000 * ms:.1f} | {ms / base:.2f}x | {rate:,.0f} | {pad:.0%} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
