"""How fast does `charnn sample` generate? The fast stepper against the naive way, in one run.

For a 2x512 LSTM with random weights (vocab 65), times `charnn sample`'s real sampler (decoding, Gumbel draws
and flushing included: the Batcher's loop) in fp32 and (CPU) with --int8 weights, or (CUDA) with and without
CUDA graphs, for 1 and 64 streams, against the naive way (the model's nn.LSTM called once per character with
carried state, a multinomial draw, written here as a baseline). In the same run it measures the
ceiling one fp32 stream can reach here: the time of the step's matrix-vector products alone (they read all
the recurrent weights, so that is the memory/cache bandwidth bound). With --checkpoint and --text it also
scores the text (the last --chars characters) by stepping the model in fp32 and in int8, to show what
int8 costs in nats per character. --compare-native adds the fast stepper with its cells as tensor operations
(CHARNN_NATIVE=0) beside the fused C cells it uses where a C compiler is there. Prints a table and writes JSON.

    python benchmarks/sample_speed.py --threads 2 --seconds 4
    python benchmarks/sample_speed.py --threads 1 --seconds 2 --compare-native --rounds 3
    python benchmarks/sample_speed.py --checkpoint checkpoints/tinyshakespeare/best.pt \
        --text ../shared/corpora/tinyshakespeare.txt
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import torch
from common import cpu_features, cpu_name

import charnn.models.stepper
from charnn.errors import CharnnError
from charnn.models import native, registry
from charnn.checkpoint import build_from_checkpoint, load_checkpoint, resolve_checkpoint
from charnn.config import MIN_CELLS, ModelConfig
from charnn.sampling import SampleConfig
from charnn.generation.sampler import Sampler
from charnn.models.int8 import weight_levels
from charnn.models.lm import CharRNN
from charnn.models.registry import build_model
from charnn.models.stepper import FastStepper
from charnn.text.tokenizer import CharTokenizer

INT8_PRODUCTS = native.int8_products
CHARS = "\n !$&',-.:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"  # 64 characters + unknown = 65


@torch.inference_mode()
def naive_sample(model, tokenizer, device, streams: int, length: int) -> int:
    """The naive way: nn.LSTM once per character with carried state, softmax, multinomial, decode."""
    tok = torch.full((streams, 1), int(tokenizer.encode("\n")[0]), dtype=torch.long, device=device)
    state, out = None, [[] for _ in range(streams)]
    for _ in range(length):
        logits, state = model(tok, state)
        tok = torch.multinomial(torch.softmax(logits[:, -1].float(), -1), 1)
        for b, i in enumerate(tok[:, 0].tolist()):
            out[b].append(i)
    return sum(len(tokenizer.decode(ids)) for ids in out)


def chars_per_second(model, tokenizer, device, streams: int, fast: bool, seconds: float, int8: bool = False,
                     graphs=None, top_p=None) -> dict:
    """Run the sampler (or, not `fast`, the naive loop) long enough to take about `seconds`, after a short run
    that sizes it (`top_p`: the sampler's nucleus; the naive loop draws from the whole softmax)."""
    def once(length):
        t0 = time.perf_counter()
        if fast:
            cfg = SampleConfig(length=length, num_samples=streams, prime="\n", int8=int8, top_p=top_p)
            sampler = Sampler(model, tokenizer, cfg, device, seed=0, graphs=graphs)
            for _ in sampler:
                pass
            chars = sampler.chars
        else:
            chars = naive_sample(model, tokenizer, device, streams, length)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return chars, time.perf_counter() - t0

    n, dt = once(64)
    for _ in range(2):  # the first guess counts the stepper's setup too: size again from a longer run
        length = max(64, int(seconds * n / dt / streams))
        n, dt = once(length)
    return {"streams": streams, "fast": fast, "int8": int8, "graphs": graphs, "chars": n, "seconds": round(dt, 3),
            "chars_per_s": round(n / dt, 1)}


def gemv_ceiling(model, seconds: float, int8: bool = False) -> float:
    """Steps per second of the stepper's recurrent matrix products alone (one stream, fp32 or int8): the bound
    set by reading every recurrent weight once per character from wherever it lives in the memory hierarchy.
    (Before session 17 the int8 rows also counted the scaling of int32 sums back to float, one small op per
    product: the C cells now do that, so it is no longer part of the products.)"""
    st = FastStepper(model, 1, int8=int8)
    if st.cell == "gru":  # input and recurrent products apart (its n gate needs W_hn h on its own)
        products = [(st.mm_hh[l], st.x_hh[l], st.gh[l]) for l in range(st.L)]
        products += [(st.mm_ih[l], st.x_ih[l], st.gates[l]) for l in range(1, st.L)]
    else:
        products = [(st.mm_hh[0], st.x_hh[0], st.gates[0])]
        products += [(st.mm_hh[l], st.x_cat[l], st.gates[l]) for l in range(1, st.L)]

    def bare(mm):  # int_mm: the int8 products' int32 sums alone (torch._int_mm), not the scaling back (C cells)
        return (lambda x, out: mm.sums(x)) if hasattr(mm, "sums") else mm
    products = [(bare(mm), x, out) for mm, x, out in products]
    n, t0 = 0, time.perf_counter()
    with torch.inference_mode():
        while time.perf_counter() - t0 < seconds:
            for _ in range(50):
                for product, x, out in products:
                    product(x, out)
            n += 50
    return n / (time.perf_counter() - t0)


def use_native(on) -> None:
    """The fast stepper's cells, for the steppers made next: fused C (charnn.models.native), "calls": the same without
    one int8 stream's whole block in C (each token's products torch's, session 17's path), or tensor operations."""
    os.environ["CHARNN_NATIVE"] = "1" if on else "0"
    native.library.cache_clear()
    native.int8_products = INT8_PRODUCTS if on is True else (lambda lib: False)


def score_by_stepping(model, tokenizer, text: str, int8: bool) -> float:
    """Nats per character of `text` under the stepper (fp32 or int8), one token at a time."""
    ids = torch.from_numpy(tokenizer.encode(text)).long()
    st, total = registry.stepper_factory(model, int8=int8)(1, ()), 0.0
    with torch.inference_mode():
        for a, b in zip(ids[:-1], ids[1:]):
            total -= torch.log_softmax(st.step(a.view(1)).double(), -1)[0, b].item()
    return total / (len(text) - 1)


def int8_steps(model, device) -> bool:
    """Whether the model's kind samples with --int8 here (the LSTM's FastStepper, or MinStepper on a VNNI CPU)."""
    try:
        return device.type == "cpu" and registry.stepper_factory(model, int8=True)(1, ()) is not None
    except CharnnError:
        return False


def time_rows(model, tokenizer, device, args, fast_kind: bool):
    """Every row of the table, --rounds times in turn, each round with its fp32 and int8 ceilings (one stream):
    (results, [(fp32 ceiling, int8 ceiling) per round])."""
    cpu, int8 = device.type == "cpu", int8_steps(model, device)
    # (label, streams, fast stepper, int8, CUDA graphs: None = the sampler's default, graphs on CUDA only, the C cells:
    # True, False, or "calls": the C cells without one int8 stream's whole block in C)
    blocks = cpu and fast_kind and FastStepper(model, 1, int8=True).blocks is not None
    min_blocks = cpu and not fast_kind and getattr(registry.stepper_factory(model)(1, ()), "blocks", None) is not None
    runs = []
    for streams in (1, 64):
        naive = f"naive: nn.{args.cell.upper()} per char" if fast_kind else "naive: forward per char"
        runs += [(naive, streams, False, False, None, True), ("charnn sample", streams, True, False, None, True)]
        runs += [("charnn sample --int8", streams, True, True, None, True)] if int8 else []
        runs += [("charnn sample, no CUDA graphs", streams, True, False, False, True)] if not cpu else []
        if args.compare_native and cpu:
            runs += [("  cells as tensor ops" if fast_kind else "  step as tensor ops", streams, True, False, None,
                      False)]
            runs += [("  --int8, cells as tensor ops", streams, True, True, None, False)] if fast_kind else []
            runs += [("  --int8, C per token", 1, True, True, None, "calls")] if streams == 1 and blocks else []
    results, ceilings = [], []
    for round_ in range(args.rounds):
        for label, streams, fast, int8, graphs, fused in runs:
            use_native(fused)
            r = chars_per_second(model, tokenizer, device, streams, fast, args.seconds, int8, graphs, args.top_p)
            results.append({"label": label, "round": round_, "native": bool(fused) and native.library() is not None,
                            "c_block": streams == 1 and fused is True and (int8 and blocks or min_blocks), **r})
        use_native(True)
        if cpu and fast_kind:
            ceilings.append((gemv_ceiling(model, args.seconds), gemv_ceiling(model, args.seconds, int8=True),
                             block_ceiling(model, args.seconds) if blocks else None))
    return results, ceilings


def block_ceiling(model, seconds: float) -> float:
    """Tokens per second of one int8 stream's matrix products alone, in the C library's own kernel (the products of
    `int8_block`, 64 tokens a call, on torch's threads), where it has one."""
    st = FastStepper(model, 1, int8=True)
    drawn, tok = torch.zeros(64, 1, dtype=torch.long), torch.zeros(1, dtype=torch.long)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        st.blocks(tok, drawn, 1.0, 0, 0, False, products_only=True)
        n += len(drawn)
    return n / (time.perf_counter() - t0)


def add_ratios(results: list, ceilings: list) -> None:
    """Each row against the naive way (1 stream, and its own stream count) and, one stream, against its round's
    ceiling (and an int8 block's against the C kernel's products alone)."""
    naive = {r["streams"]: r["chars_per_s"] for r in results if not r["fast"]}
    for r in results:
        r["vs_naive_1_stream"] = round(r["chars_per_s"] / naive[1], 2)
        r["vs_naive_same_streams"] = round(r["chars_per_s"] / naive[r["streams"]], 2)
        if ceilings and r["fast"] and r["streams"] == 1:
            r["share_of_ceiling"] = round(r["chars_per_s"] / ceilings[r["round"]][1 if r["int8"] else 0], 3)
            if r["c_block"]:
                r["share_of_c_products"] = round(r["chars_per_s"] / ceilings[r["round"]][2], 3)


def print_rows(results: list) -> None:
    """The table, one line a timed row."""
    print(f"{'sampler':<30}{'round':>6}{'streams':>8}{'chars':>10}{'seconds':>9}{'chars/s':>12}{'x naive(1)':>12}"
          f"{'x naive(same)':>15}{'of ceiling':>12}{'of C prod.':>12}")
    for r in results:
        share = f"{r['share_of_ceiling']:.1%}" if "share_of_ceiling" in r else ""
        own = f"{r['share_of_c_products']:.1%}" if "share_of_c_products" in r else ""
        print(f"{r['label']:<30}{r['round'] + 1:>6}{r['streams']:>8}{r['chars']:>10,}{r['seconds']:>9.2f}"
              f"{r['chars_per_s']:>12,.0f}{r['vs_naive_1_stream']:>12.1f}{r['vs_naive_same_streams']:>15.1f}{share:>12}"
              f"{own:>12}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--seconds", type=float, default=4.0, help="rough length of each timed run")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cell", default="lstm", help="lstm, gru, rnn, or mingru / minlstm (kind minrnn: its own "
                    "stepper, charnn.models.minstep; int8 where the CPU has AVX-512 VNNI; no ceiling rows)")
    ap.add_argument("--expand", type=int, default=1, help="--cell mingru/minlstm: state width / --hidden")
    ap.add_argument("--ffn", type=int, default=2, help="--cell mingru/minlstm: feed-forward width / --hidden")
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--checkpoint", help="time (and score) this trained model instead of random weights")
    ap.add_argument("--text", help="with --checkpoint: score the last --chars characters of this file, fp32 vs int8")
    ap.add_argument("--chars", type=int, default=20000)
    ap.add_argument("--int8-kernel", choices=["auto", "int_mm", "fbgemm"], default="auto",
                    help="force one of charnn.models.int8's kernels (auto: what charnn picks on this machine)")
    ap.add_argument("--compare-native", action="store_true", help="also time the fast stepper with its cells as "
                    "tensor operations (CHARNN_NATIVE=0) beside the fused C cells, alternating, with the ceilings")
    ap.add_argument("--rounds", type=int, default=1, help="repeat every row (and the ceilings) this many times, "
                    "alternating, so slow drift of the machine shows as spread, not as a difference")
    ap.add_argument("--top-p", type=float, default=None, help="the sampler's rows draw with this top-p")
    ap.add_argument("--out", default="benchmarks/results/sample_speed.json")
    args = ap.parse_args()
    if args.int8_kernel != "auto":
        charnn.models.stepper.int8_kernel = lambda: args.int8_kernel
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    if args.checkpoint:
        model, tokenizer = build_from_checkpoint(load_checkpoint(resolve_checkpoint(args.checkpoint)), device)
        c = model.config
        args.cell, args.layers, args.hidden = c.cell, c.layers, c.hidden
    else:
        tokenizer = CharTokenizer(list(CHARS))
        flat = ModelConfig(vocab_size=tokenizer.vocab_size, cell=args.cell, layers=args.layers, hidden=args.hidden,
                           embed=64)
        wide = {"expand": args.expand, "ffn": args.ffn}
        model = (build_model(replace(flat, kind="minrnn", extra=wide)) if args.cell in MIN_CELLS
                 else CharRNN(flat)).to(device)
    model.eval()
    fast_kind = isinstance(model, CharRNN)  # a kind with charnn's FastStepper: int8 and the gemv ceiling

    cpu = device.type == "cpu"
    results, ceilings = time_rows(model, tokenizer, device, args, fast_kind)
    ceiling, ceiling_int8 = (max(c[i] for c in ceilings) for i in (0, 1)) if ceilings else (None, None)
    ceiling_block = max((c[2] for c in ceilings if c[2]), default=None)
    add_ratios(results, ceilings)

    int8_used = charnn.models.stepper.int8_kernel()
    print(f"{args.layers}x{args.hidden} {args.cell}, vocab {tokenizer.vocab_size}, {device}, {args.threads} threads, "
          f"torch {torch.__version__}, {f'{cpu_name()} ({cpu_features()})' if cpu else torch.cuda.get_device_name()}"
          + (f", int8 kernel {int8_used}" if cpu else "") + (f", top-p {args.top_p}" if args.top_p else ""))
    print_rows(results)
    quality = None
    if ceiling:
        print("one-stream ceiling (the step's matrix products alone: torch's fp32, torch's int8, the C int8 kernel's), "
              "per round: " + ", ".join(f"{a:,.0f} / {b:,.0f} / {f'{c:,.0f}' if c else '-'} chars/s"
                                        for a, b, c in ceilings))
    if args.checkpoint and args.text and int8_steps(model, device):
        text = Path(args.text).read_text(encoding="utf-8")[-args.chars:]
        quality = {"chars": len(text), "fp32": score_by_stepping(model, tokenizer, text, False),
                   "int8": score_by_stepping(model, tokenizer, text, True)}
        print(f"nats/char on the last {len(text):,} characters of {args.text}: fp32 {quality['fp32']:.4f}, "
              f"int8 {quality['int8']:.4f} ({quality['int8'] - quality['fp32']:+.4f})")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"model": f"{args.layers}x{args.hidden} {args.cell}", "vocab": tokenizer.vocab_size, "device": str(device),
            "threads": args.threads, "torch": torch.__version__, "cpu": cpu_name(), "cpu_features": cpu_features(),
            "cpu_count": os.cpu_count(), "load_average": os.getloadavg(), "checkpoint": args.checkpoint,
            "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
            "int8_kernel": int8_used if cpu else None, "top_p": args.top_p,
            "int8_weight_levels": weight_levels(1) if cpu and int8_used == "int_mm" else None}
    out.write_text(json.dumps({**meta, "results": results, "fp32_gemv_ceiling_chars_per_s": ceiling,
                               "int8_gemv_ceiling_chars_per_s": ceiling_int8,
                               "int8_c_products_ceiling_chars_per_s": ceiling_block,
                               "ceilings_per_round": ceilings, "native_library": str(native.library()),
                               "quality_nats_per_char": quality}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
