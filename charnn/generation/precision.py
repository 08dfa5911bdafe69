"""The precision an encoder-decoder decodes in (`transduce --precision`, `eval --precision` of a --pairs model,
`Seq2SeqModel.transduce(precision=...)`): fp32, bf16 autocast, or auto, decided by measuring, as training's auto
is (charnn.training.precision).

A batched search (256 inputs x 5 beams: 1,280 rows a step) is bound by its matrix products, which bf16 runs at
about twice fp32's rate where the CPU has native bf16 (a Zen 4 EPYC's AVX512-BF16, a Xeon's AMX), while one input
at a time is bound by the cost of each call and gains nothing; without native bf16 it is emulated and slower. So
auto takes fp32 where the device has no native bf16, and otherwise times the decoder's one-step call (the search's
work) for the batch's rows in fp32 and in bf16, alternating, on made-up inputs, and takes bf16 only when it is at
least 5% faster. It is decided for the model and the search's width (beam, or samples per input) at the default
batch of 256 inputs, whatever --batch-size is, so an input's output does not depend on the batch it is decoded in;
and remembered in the cache (precision.json, beside training's decisions), keyed by the machine, torch, device,
threads, the model's shape and the rows (and in the process, where the cache cannot be written), so it is
measured once (about a second: at least three rounds, the best of each precision compared) and the same input
decodes the same way on this machine from then on.

bf16 rounds every product to 8 bits of mantissa, so where two candidates are nearly tied an output can differ
from fp32's (1 of 4,168 words of a G2P test set, greedy and beam 5, the same word error rate; SEQ2SEQ.md), and,
rarely, between batch sizes (the products' blocking differs with the rows): `--precision fp32` gives outputs that
never depend on the batch. Printed scores (`--scores`) are recomputed in fp32 either way, and `charnn eval`'s nats
are scored in fp32.
"""

from __future__ import annotations

import threading
import time
import warnings
from dataclasses import replace
from typing import Dict

import torch

from charnn.data.cache import decisions, remember_decision
from charnn.device import PrecisionChoice, autocast, machine_key, model_key, native_bf16
from charnn.errors import CharnnError, first_line, is_out_of_memory

MIN_GAIN = 1.05  # bf16 must be this much faster than fp32 to be chosen (below it: noise)
STEPS, MIN_ROUNDS, MAX_ROUNDS = 3, 3, 8  # decoder steps per timing; alternating (fp32, bf16) timings, the best kept
SOURCE_LENGTH = 12  # made-up inputs' length (a word of a pronouncing dictionary: about 8 characters and its end)
BUDGET = 1.0  # seconds of timed rounds, past MIN_ROUNDS (a busy machine's rounds vary: its best one is compared)
_decided: Dict[str, PrecisionChoice] = {}  # this process's decisions: a cache that cannot be written measures once
_lock = threading.Lock()  # (threads transducing at once measure once, not against each other)


def choose(requested: str, model, inputs: int, per_input: int, device: torch.device) -> PrecisionChoice:
    """The precision to decode `inputs` inputs at a time, `per_input` rows each (beam or samples), in: `requested`
    (fp32, bf16 or auto). A bf16 that does not run on this device is one error. See the module doc."""
    if requested == "fp32":
        return PrecisionChoice("fp32", "forced")
    if requested == "bf16":
        error = _runs(model, device)
        if error:
            raise CharnnError(f"--precision bf16 cannot decode with this model on this "
                              f"{'CPU' if device.type == 'cpu' else device.type.upper()} ({error}); use fp32 or auto")
        return PrecisionChoice("bf16", "forced")
    native, why_not = native_bf16(device)
    if not native:
        return PrecisionChoice("fp32", "rule", None, why_not)
    key = _key(model, inputs * per_input, device)
    with _lock:
        if key in _decided:
            return replace(_decided[key], how="cached")
        cached = decisions().get(key)
        if cached and cached.get("precision") in ("fp32", "bf16"):
            return PrecisionChoice(cached["precision"], "cached", cached.get("speedup"),
                                   f"measured {cached.get('date', 'earlier')}, cached")
        choice = _measure(model, inputs, per_input, device)
        if choice.how == "measured":
            _decided[key] = choice
            remember_decision(key, {"precision": choice.precision, "speedup": choice.speedup})
        return choice


def _key(model, rows: int, device: torch.device) -> str:
    return f"decode | {machine_key(device)} | {model_key(model)} | rows {rows}"


def _start(model, inputs: int, per_input: int, device: torch.device, precision: str):
    """Made-up inputs encoded, each read by its `per_input` decoder rows: (x, state, memory), as a search starts."""
    c = model.config
    gen = torch.Generator().manual_seed(0)  # (the model's own RNG is left alone)
    ids = torch.randint(1, max(2, c.source_vocab), (inputs, SOURCE_LENGTH), generator=gen).to(device)
    lengths = torch.full((inputs,), SOURCE_LENGTH, dtype=torch.long)
    with autocast(device, precision):
        memory, state = model.encode((ids, lengths))
    rep = torch.arange(inputs, device=device).repeat_interleave(per_input)
    x = torch.randint(1, max(2, c.vocab_size), (inputs * per_input, 1), generator=gen).to(device)
    return x, model.state_ops.select(state, rep), memory.grouped(per_input)


def _steps(model, start, device: torch.device, precision: str, n: int) -> float:
    """Seconds for n one-step decoder calls from `start`, each fed the state the last one left."""
    x, state, memory = start
    t0 = time.perf_counter()
    with autocast(device, precision):
        for _ in range(n):
            logits, state = model.decode(x, state, memory)
    float(logits[0, -1, 0])  # (waits for the device)
    return time.perf_counter() - t0


@torch.inference_mode()
def _runs(model, device: torch.device) -> str:
    """'' if one bf16 decoder step runs on `device` in bf16; else the first line of why not (an autocast that
    cannot run bf16 there, as on some Apple MPS, warns and runs fp32: that is a no too)."""
    x, state, memory = _start(model, 1, 1, device, "fp32")
    try:
        with warnings.catch_warnings(), autocast(device, "bf16"):
            warnings.simplefilter("ignore")
            logits, _ = model.decode(x, state, memory)
    except RuntimeError as e:
        return first_line(e, 300).split(". ")[0]
    return "" if logits.dtype == torch.bfloat16 else f"autocast to bf16 does not run on {device.type}"


@torch.inference_mode()
def _measure(model, inputs: int, per_input: int, device: torch.device) -> PrecisionChoice:
    error = _runs(model, device)
    if error:
        return PrecisionChoice("fp32", "measured", None, f"bf16 does not decode here ({error})")
    times: dict = {"fp32": [], "bf16": []}
    try:
        starts = {p: _start(model, inputs, per_input, device, p) for p in times}
        for p in starts:  # warm-up: oneDNN's primitives for these shapes, the allocator
            _steps(model, starts[p], device, p, 1)
        t_end = time.perf_counter() + BUDGET
        for i in range(MAX_ROUNDS):
            if i >= MIN_ROUNDS and time.perf_counter() > t_end:
                break
            for p in starts:
                times[p].append(_steps(model, starts[p], device, p, STEPS))
    except (RuntimeError, MemoryError) as e:  # (a default batch's rows that do not fit a small GPU: not remembered)
        if not is_out_of_memory(e):
            raise
        return PrecisionChoice("fp32", "unmeasured", None, "the measurement's rows did not fit in memory")
    speedup = min(times["fp32"]) / min(times["bf16"])
    chosen = "bf16" if speedup >= MIN_GAIN else "fp32"
    return PrecisionChoice(chosen, "measured", round(speedup, 3), f"bf16 decodes at {speedup:.2f}x fp32, measured")

