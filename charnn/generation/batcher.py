"""Continuous batching: rows (one per sampled continuation) join and leave one generation loop between steps.

Every row has its own prompt, length, temperature, top-k/top-p, stop strings and seed, and the batch changes
shape as rows come and go (`charnn sample`'s fixed batch is the case where all rows start together). Each token
of a `Batcher.step` feeds every live row's next input token through one FastStepper call, scales and filters
each row's logits by its own settings (a subword model's byte pieces only where UTF-8 has them: `draw.Utf8Mask`) and
adds the row's own seeded Gumbel noise (`draw.gumbel_noise`, so a seed gives the same text whatever else is in the
batch); after a block of up to BLOCK tokens each row decodes its own. Live rows are kept packed at the front of the
batch; the stepper is one of a few sizes (powers of two, and the capacity), swapped as the row count grows and
shrinks, so one row does not pay for sixty-four. The stepper is the model kind's (charnn.models.registry): the
FastStepper, or for a kind without a fast stepper ModuleStepper, its module's own forward; the Batcher moves
rows only through their row methods (load, move, copy_rows) and never sees a state's layout.

On CUDA, once the same rows have stepped one full block together, the block's steps and draws are recorded
once as a CUDA graph and replayed (one launch per block instead of ~25 per token, which is what bounds one
stream's speed on a GPU); rows joining or leaving drop the graph. With `int8=True` (CPU) the stepper keeps its
recurrent weights as int8. This is the one generation loop: `charnn sample` (`sampler.Sampler`), the Python
API and `charnn serve` all draw their tokens here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple, Union

import time

import numpy as np
import torch

from charnn.sampling import SamplingParams
from charnn.errors import CharnnError, first_line
from charnn.generation.draw import NOISE_FLOATS, DrawPlan, Utf8Mask, filter_logits, gumbel_noise, temper
from charnn.generation.prefill import CHUNK, prefill, run
from charnn.generation.prompt import heal, start_ids
from charnn.generation.stop import StopCut
from charnn.models import registry
from charnn.models.stepper import FastStepper, ModuleStepper

Stepper = Union[FastStepper, ModuleStepper]  # what steps the rows: the same row methods, layouts of their own
MAX_STOPS = 4  # stop strings per row, as OpenAI's API allows
BLOCK = 8  # the most tokens one `step` call draws per row, by default
PREFILL_SECONDS = 0.05  # prompt loading per `step` while other rows are generating: they never wait much longer
PREFILL_ALONE_SECONDS = 0.25  # ... and while no row is (the caller still gets control back to admit or cancel)


class PrefillFailed(Exception):
    """Loading a long prompt failed (memory, say): its rows have left the batch; the other rows go on."""

    def __init__(self, rows: List["Row"], cause: BaseException):
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.rows = rows


@dataclass
class RowSpec:
    """What one row asks for."""

    prompt: str = ""  # text to condition on (not part of the output)
    length: int = 500  # characters to generate
    sampling: SamplingParams = field(default_factory=lambda: SamplingParams(seed=0))  # its seed: the row's noise's
    stop: Tuple[str, ...] = ()  # end right before the first of these to be completed (not included)
    heal: bool = True  # subword models: complete the prompt's last piece in the first draw (see prompt.heal)


@dataclass
class Row:
    """One live continuation: its settings and where it has got to."""

    spec: RowSpec
    decoder: object
    cut: StopCut
    allowed: Optional[np.ndarray] = None  # token healing: ids the first draw may take
    first: int = 0  # the row's first input: its prompt's last token
    remaining: int = 0  # characters still to generate
    tokens: int = 0  # tokens drawn so far (not those past a stop, where known: usage)
    chars: int = 0  # characters handed out so far
    finish_reason: Optional[str] = None  # "stop" or "length" once finished
    slot: int = -1  # position in the batch while live
    tag: object = field(default=None, repr=False)  # the caller's handle (the server's request and choice)


class Batcher:
    """Rows step together; `add` and `remove` between steps, `step` makes one token for every live row."""

    def __init__(self, model, tokenizer, device: torch.device, capacity: int = 64, int8: bool = False,
                 block: int = BLOCK, graphs: Optional[bool] = None, rows: int = 1):
        """`block`: the most tokens one `step` draws per row (fewer for big batches and vocabularies, so the noise
        buffer stays under NOISE_FLOATS numbers); `graphs`: replay full blocks as CUDA graphs (default: on CUDA);
        `rows`: the rows expected at once (a fixed batch: all of them), so the first stepper holds them all
        instead of growing through the powers of two as they join."""
        self.model, self.tokenizer, self.device, self.capacity = model.eval(), tokenizer, device, capacity
        self.vocab, self.int8 = model.config.vocab_size, int8
        self.block = max(1, min(block, NOISE_FLOATS // (capacity * self.vocab)))
        self.banned = [] if tokenizer.unk_id is None else [tokenizer.unk_id]
        self.rows: List[Row] = []  # live rows, rows[i].slot == i
        self.make_stepper = registry.stepper_factory(model, int8)  # (rows, banned) -> the kind's stepper
        self.steppers: Dict[int, Tuple[Stepper, torch.Tensor]] = {}  # size -> (stepper, its input tokens)
        self.stepper, self.tokens = self._stepper(max(1, min(rows, capacity)))
        self.noise = torch.zeros(self.block, capacity, self.vocab, device=device, dtype=torch.float32)  # row by row
        self.drawn = torch.zeros(self.block, capacity, dtype=torch.long, device=device)  # this block's draws
        self.healing, self.plan = False, None  # a row's first draw completes its prompt; the rows' draw settings
        self.utf8 = Utf8Mask.of(tokenizer, capacity, device)  # subword models: byte pieces only where UTF-8 has them
        self.graphs = device.type == "cuda" if graphs is None else graphs  # off CUDA: no effect
        self.graph = self.graph_rows = self.seen_rows = None  # the recorded block, for which rows
        self.prompt_state: Optional[tuple] = None  # (prompt ids, the model's state after them): n rows, one prefill
        self.loading: List[Tuple[np.ndarray, object, List[Row]]] = []  # long prompts: (ids, prefill, rows waiting)
        self.view_key, self.block_views, self.notes = None, [], []  # see _views; notes: a fallback taken, for the user

    @property
    def active(self) -> int:
        """Rows generating or waiting for their prompt to load."""
        return len(self.rows) + sum(len(rows) for _, _, rows in self.loading)

    @property
    def all_rows(self) -> List[Row]:
        """Every row not finished: generating, then loading."""
        return self.rows + [r for _, _, rows in self.loading for r in rows]

    def _stepper(self, size: int) -> Tuple[Stepper, torch.Tensor]:
        if size not in self.steppers:
            with torch.inference_mode(False):  # buffers that later steps update in place, in or out of inference mode
                self.steppers[size] = (self.make_stepper(size, self.banned),
                                       torch.zeros(size, dtype=torch.long, device=self.device))
        return self.steppers[size]

    def warm(self) -> None:
        """Build every stepper size up to the capacity now, so rows joining later do not wait for one."""
        size = 1
        while size < self.capacity:
            size = min(size * 2, self.capacity)
            self._stepper(size)

    def _resize(self, n: int) -> None:
        """Use the smallest power-of-two stepper (or the capacity) that holds n rows (shrinking only below a
        quarter), moving the live rows' state across."""
        size = self.stepper.B
        if n > size:
            size = min(1 << (n - 1).bit_length(), self.capacity)
        elif size > 1 and n <= size // 4:
            size = max(1, 1 << max(0, n - 1).bit_length())
        if size == self.stepper.B:
            return
        (new, tokens), old, k = self._stepper(size), self.stepper, min(len(self.rows), size)
        new.copy_rows(old, k)
        tokens[:k].copy_(self.tokens[:k])
        self.stepper, self.tokens = new, tokens

    @torch.inference_mode()
    def add(self, spec: RowSpec, tag: object = None) -> Row:
        """Condition a new row on its prompt and put it in the batch; it draws from the next step on. A prompt
        longer than a chunk is loaded in slices during the next steps (`active` counts its row meanwhile)."""
        if self.active >= self.capacity:
            raise CharnnError(f"the batch is full ({self.capacity} rows)")
        if len(spec.stop) > MAX_STOPS:
            raise CharnnError(f"at most {MAX_STOPS} stop strings, got {len(spec.stop)}")
        ids, allowed, skip = start_ids(self.tokenizer, spec.prompt), None, b""
        if spec.prompt and spec.heal:
            ids, allowed, skip = heal(self.tokenizer, ids)
        row = Row(spec, self.tokenizer.decoder(skip) if skip else self.tokenizer.decoder(), StopCut(spec.stop),
                  allowed, remaining=spec.length, tag=tag)
        if spec.length <= 0:
            row.finish_reason = "length"
            return row
        row.first = int(ids[-1])  # the prompt's last token is the row's first input
        context = ids[:-1]
        if self._known(context):
            self._join(row, self.prompt_state[1])
        elif len(context) <= CHUNK:  # a short prompt is conditioned at once
            self.prompt_state = context, run(prefill(self.model, context, self.device))
            self._join(row, self.prompt_state[1])
        else:  # a long one in slices between steps (`step`); rows of the same prompt share one prefill
            waiting = next((rows for ids_, _, rows in self.loading if np.array_equal(ids_, context)), None)
            if waiting is None:
                self.loading.append((context, prefill(self.model, context, self.device, CHUNK), [row]))
            else:
                waiting.append(row)
        return row

    def _known(self, ids: np.ndarray) -> bool:
        return self.prompt_state is not None and np.array_equal(self.prompt_state[0], ids)

    def _join(self, row: Row, state) -> None:
        """Put a row whose prompt is loaded into the batch, in the state `state` (None: zero)."""
        if len(self.rows) + 1 > self.stepper.B:  # grow only: a stepper made for more rows keeps them
            self._resize(len(self.rows) + 1)
        row.slot = len(self.rows)
        self.rows.append(row)
        self.stepper.load(row.slot, state)
        self.tokens[row.slot], self.utf8.state[row.slot] = row.first, 0  # (a prompt is whole characters)
        self.healing = self.healing or row.allowed is not None
        self._changed()

    def _prefill(self, seconds: float) -> None:
        """Run the loading prompts' prefills for about `seconds` (at least one chunk); rows whose prompt is done
        join the batch."""
        t0 = time.perf_counter()
        while self.loading:
            ids, gen, rows = self.loading[0]
            try:
                next(gen)
            except StopIteration as done:
                self.loading.pop(0)
                self.prompt_state = ids, done.value
                for row in rows:
                    self._join(row, done.value)
            except Exception as e:  # this prompt's rows fail; a dead prefill is never stepped again
                self.loading.pop(0)
                raise PrefillFailed(rows, e) from e
            if time.perf_counter() - t0 >= seconds:
                return

    @torch.inference_mode()
    def remove(self, row: Row, resize: bool = True) -> None:
        """Take a row out of the batch (finished, or its reader left); the last row moves into its slot. The
        stepper shrinks when few rows are left (`resize=False`: the caller resizes once after several)."""
        if row.slot < 0:  # loading its prompt (or gone): leave the queue; a prefill no row waits for is dropped
            for entry in self.loading:
                if row in entry[2]:
                    entry[2].remove(row)
            self.loading = [entry for entry in self.loading if entry[2]]
            return
        last = self.rows.pop()
        if last is not row:
            i, j = row.slot, last.slot
            self.stepper.move(j, i)
            self.tokens[i], self.utf8.state[i] = self.tokens[j], self.utf8.state[j]
            last.slot = i
            self.rows[i] = last
        row.slot = -1
        self._changed()
        if resize and self.rows:  # none left: keep the stepper for the next row
            self._resize(len(self.rows))

    def _changed(self) -> None:
        """Rows joined or left: the draw settings are made again, and a recorded block no longer applies."""
        self.plan, self.graph, self.graph_rows, self.seen_rows = None, None, None, None

    @torch.inference_mode()
    def step(self, tokens: int = 1) -> List[Tuple[Row, str]]:
        """Up to `tokens` tokens for every live row (fewer when a row needs fewer characters, or heals):
        (row, new text) for each row that produced text or finished (then `row.finish_reason` is set and the
        row has left the batch). Several tokens per call cost Python time once per row, not once per token."""
        if self.loading:
            self._prefill(PREFILL_SECONDS if self.rows else PREFILL_ALONE_SECONDS)
        rows, n = self.rows, len(self.rows)
        if not n:
            return []
        k = 1 if self.healing else max(1, min(tokens, self.block, min(r.remaining for r in rows)))
        if self.plan is None:
            self.plan = DrawPlan.of([r.spec.sampling for r in rows], [r.tokens for r in rows], self.device)
        if not self._block(n, k):
            self._noise(rows, k)
            if not self._replay(n, k):
                self._body(n, k)
        self.healing = False
        out = []
        for row, toks in zip(list(rows), self.drawn[:k, :n].t().tolist()):
            row.allowed = None
            text = (decoded := row.decoder.push(toks))[: row.remaining]
            row.remaining -= len(text)
            piece = row.cut.feed(text)  # (a character a token: those drawn past a stop are not counted, for usage)
            row.tokens += k - (min(k - 1, row.cut.after) if row.cut.done and len(decoded) == k else 0)
            if row.cut.done:
                row.finish_reason = "stop"
            elif row.remaining <= 0:
                piece += row.cut.flush()
                row.finish_reason = "length"
            row.chars += len(piece)
            if piece or row.finish_reason:
                out.append((row, piece))
            if row.finish_reason:
                self.remove(row, resize=False)
        if self.rows and self.stepper.B > len(self.rows):
            self._resize(len(self.rows))
        return out

    def _body(self, n: int, k: int) -> None:
        """k tokens for the first n slots: step, draw into self.drawn, step on the draw. What a graph records.
        Each draw is the next step's input as it lies (a stepper-wide row of self.drawn: idle slots past n step
        on whatever ids they hold), so a token costs no copies; the block's last draw becomes self.tokens."""
        views, step, whole = self._views(n, k), self.stepper.step, n == self.stepper.B
        prev = self.tokens
        plain = self.plan.scale is None and not self.plan.filters and not self.healing  # argmax(logits + noise)
        fused = self._in_c(n)  # FastStepper, one stream: the head and draw in C
        for noise, out, row in views:
            if fused is not None:
                self.stepper.step_draw(prev, noise, out, *fused, mask=self.utf8.c_args)
            else:
                logits = step(prev)
                self._draw(logits if whole else logits[:n], noise, out, plain)  # (n, V): rows past n are idle
            prev = row
        self.tokens[:n].copy_(views[-1][1])

    def _views(self, n: int, k: int) -> list:
        """Per token of a block: (its noise (n, V), its draw (n,), the stepper-wide row of draws), made once per
        shape: a view costs about a microsecond, a token of one small row a few dozen."""
        key = (n, k, self.stepper.B)
        if self.view_key != key:
            B = self.stepper.B
            self.view_key = key
            self.block_views = [(self.noise[t, :n], self.drawn[t, :n], self.drawn[t, :B]) for t in range(k)]
        return self.block_views

    def _replay(self, n: int, k: int) -> bool:
        """Replay the recorded block if it applies (recording it once the same rows have made one full block
        without it); False: run the body instead."""
        if not self._records() or self.healing or k != self.block:
            return False
        rows = (self.stepper.B, n)
        if self.graph is None or self.graph_rows != rows:
            if self.seen_rows != rows:  # rows that come and go (a server) would be recorded again and again
                self.seen_rows = rows
                return False
            try:
                self.graph, self.graph_rows = self._capture(n, k), rows
            except RuntimeError as e:  # a capture this torch/driver refuses: the body gives the same tokens
                cause = e.__context__ if isinstance(e.__context__, RuntimeError) else e  # not the follow-on error
                self.notes.append(f"sampling without CUDA graphs ({first_line(cause)})")
                self.graphs = False
                return False
        self.graph.replay()
        return True

    def _records(self) -> bool:
        """Whether full blocks are recorded: `graphs` on a CUDA device (elsewhere the body simply runs)."""
        return self.graphs and self.device.type == "cuda" and self.stepper.static

    def _capture(self, n: int, k: int):
        """Record one block as a CUDA graph. The warm-up run a capture needs first is undone (state and input
        tokens), so no token is lost or drawn twice."""
        kept = (*self.stepper.state_tensors(), self.tokens, self.utf8.state)
        saved = [t.clone() for t in kept]
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self._body(n, k)  # allocations and library handles happen here, not during the capture
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._body(n, k)
            return graph
        finally:  # also after a failed capture: the body then carries on from the same state
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            for t, saved_t in zip(kept, saved):
                t.copy_(saved_t)

    def _noise(self, rows: List[Row], k: int) -> torch.Tensor:
        """(k, n, V): each row's Gumbel noise for its next k draws (zeros for greedy rows), in one go."""
        block = self.noise[:k, :len(rows)]
        plan = self.plan
        block.copy_(gumbel_noise(plan.seeds, plan.drawn, k, self.vocab))
        plan.drawn += k
        if plan.greedy is not None:
            block[:, plan.greedy] = 0.0
        return block

    def _in_c(self, n: int) -> Optional[Tuple[float, int, float]]:
        """Where the stepper draws in C (one row, no healing): the row's temperature (greedy: 1.0), top-k (0: none,
        as filter_logits skips a k >= the vocabulary), top-p (1.0: none). Else None."""
        k, p = (self.plan.filters[0][0], self.plan.filters[0][1]) if self.plan.filters else (None, None)
        if n != self.stepper.B or not getattr(self.stepper, "draws", False) or self.healing:
            return None
        return (1.0 if self.plan.scale is None else float(self.plan.scale[0, 0]),
                k if k is not None and k < self.vocab else 0, 1.0 if p is None else float(p))

    def _block(self, n: int, k: int) -> bool:
        """Make the block in C (one row, its noise included: FastStepper.draw_block) if it applies; else False."""
        draw = self._in_c(n)
        if draw is None or self.stepper.blocks is None:
            return False
        params = self.rows[0].spec.sampling
        self.stepper.draw_block(self.tokens, self.drawn[:k, :n], draw[0], params.seed, int(self.plan.drawn[0]),
                                params.greedy, draw[1], draw[2], mask=self.utf8.c_args)
        self.plan.drawn += k
        self.tokens[:n].copy_(self.drawn[k - 1, :n])
        return True

    def _draw(self, logits: torch.Tensor, noise: torch.Tensor, out: torch.Tensor, plain: bool) -> None:
        """(n, V) logits -> (n,) ids in `out`, each row by its own temperature, filters and noise (`plain`: noise only)."""
        x = self.utf8.apply(logits)  # (before the filters, as healing: they choose among what UTF-8 allows)
        if not plain:  # (plain: the common case, with the fewest calls per token)
            scale, filters = self.plan.scale, self.plan.filters
            x = temper(x, scale) if scale is not None else x  # in place: the stepper writes them anew each step
            if self.healing:  # before top-k/top-p, as sample always did: the filters then choose among the allowed
                for i, r in enumerate(self.rows):
                    if r.allowed is not None:  # token healing: the first draw completes the piece taken back
                        outside = torch.ones(self.vocab, dtype=torch.bool, device=self.device)
                        outside[torch.from_numpy(r.allowed).to(self.device)] = False
                        x[i, outside] = float("-inf")
            for k, p, at in filters:
                if at is None:
                    x = filter_logits(x, k, p)
                else:
                    x[at] = filter_logits(x[at], k, p)
        torch.argmax(x.add_(noise), dim=-1, out=out)
        self.utf8.advance(out)

