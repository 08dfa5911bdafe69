"""`charnn.load(...) -> Model`: generate, stream and score text from Python, with the code the server runs.

Generation goes through `charnn.generation.batcher.Batcher`, the row-wise loop that `charnn serve` shares among
all its clients; here the batch holds this call's `n` continuations (a few kept between calls:
`charnn.api.pool`). Scoring is `charnn eval`'s `evaluate_text`.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from charnn.api.pool import BatcherPool
from charnn.api.params import GenerationParams, ParamError, check_flag, keyword_names, plain_number, plain_value
from charnn.checkpoint import build_from_checkpoint, build_seq2seq, is_seq2seq, load_checkpoint, resolve_checkpoint
from charnn.config import DynamicConfig
from charnn.device import resolve_device
from charnn.scoring.dynamic import adapt as adapted_copy
from charnn.errors import CharnnError, WrongKind, chars_shown
from charnn.scoring.evaluate import EvalResult, evaluate_text
from charnn.generation.batcher import BLOCK, Batcher
from charnn.inspect.surprisal import scan, token_spans
from charnn.sampling import is_integer, python_shown, python_spelling

if TYPE_CHECKING:
    from charnn.api.seq2seq import Seq2SeqModel
    from charnn.inspect.activations import Activations
    from charnn.inspect.gradients import GradientReach
    from charnn.inspect.surprisal import Surprisal


TOP_LOGPROBS = 20  # token_logprobs' `top` at most (OpenAI's chat API's largest; its /v1/completions: 5)


class Model:
    """A trained model and its tokenizer, ready to generate and score text. Make one with `charnn.load`."""

    kind = "lm"  # a language model (`charnn.load` gives a Seq2SeqModel, kind "seq2seq", for a --pairs one)

    def __init__(self, model, tokenizer, device: torch.device, path: Path, data: Optional[dict] = None,
                 int8: bool = False):
        self.net, self.tokenizer, self.device, self.path = model.eval(), tokenizer, device, Path(path)
        self.int8 = int8  # generate with int8 recurrent weights (CPU; `charnn sample --int8`)
        self.name = self.path.parent.name if self.path.name in ("best.pt", "last.pt") else self.path.stem
        self._info: Optional[dict] = None
        self._pool = BatcherPool()  # batchers kept between calls
        self._lock_scoring, self._lock_tables = threading.Lock(), threading.Lock()
        self._pieces_by_id: Optional[List[str]] = None  # one token_logprobs at a time: concurrent long texts do not add up
        self._chars_by_id: Optional[np.ndarray] = None  # characters that start in each token (set with the pieces)
        self._created = int(self.path.stat().st_mtime) if self.path.exists() else 0
        data = data or {}
        self.step, self.best_val_loss = data.get("step"), data.get("best_val_loss")
        self.labels: Optional[dict] = data.get("labels")  # --label-by: names, training sizes (None: no labels)
        self.label: Optional[str] = None  # set on the Model that `for_label` returns
        kind = (data.get("model_config") or {}).get("kind", "lm")
        self._reads_text = kind != "classifier"  # a classifier labels whole texts: it predicts no characters
        self.adaptation = None  # set on the Model that `adapt` returns: its `result` while adapting, `seconds`
        self.twin = False  # set by `adapt` on a labelled model: the label-free twin it adapted has no labels

    def __repr__(self) -> str:
        return f"Model({self.name!r}, {self.path}, on {self.device})"

    def __getstate__(self) -> dict:
        """Pickling and copy.deepcopy (multiprocessing, joblib, a cache) take the weights and settings; the locks
        and the batchers kept between calls (native buffers) are made again on the other side."""
        state = dict(self.__dict__)
        for name in ("_lock_scoring", "_lock_tables"):
            state.pop(name)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock_scoring, self._lock_tables = threading.Lock(), threading.Lock()

    @property
    def info(self) -> dict:
        """What `charnn info --json` reports about the checkpoint."""
        if self._info is None:
            from charnn.reports.info import describe
            self._info = describe(str(self.path))
        return self._info

    def check_prompt(self, prompt: str, param: str = "prompt") -> None:
        """Raise ParamError naming the characters of `prompt` the model's vocabulary lacks."""
        missing = self.tokenizer.unknown(prompt) if prompt else []
        if missing:
            raise ParamError(f"the prompt has characters the model's vocabulary lacks: {chars_shown(missing)}", param)

    def params(self, prompt: str = "", length: int = 500, temperature: float = 1.0, top_k: Optional[int] = None,
               top_p: Optional[float] = None, n: int = 1, stop: Union[None, str, Sequence[str]] = None,
               seed: Optional[int] = None) -> GenerationParams:
        """Checked generation settings (ParamError, a ConfigError, names the one at fault). NumPy's numbers count as
        Python's (`n=np.int64(4)` from an array was refused as not an integer)."""
        length, temperature, top_k, top_p, n, seed = map(plain_number, (length, temperature, top_k, top_p, n, seed))
        with python_spelling():  # (the server's clients get JSON's spelling: `true`; the API's callers True)
            p = GenerationParams(prompt, length, temperature, top_k, top_p, n, stop, seed).validate()
        self.check_prompt(p.prompt)
        return p

    def generate(self, prompt: str = "", length: int = 500, temperature: float = 1.0, top_k: Optional[int] = None,
                 top_p: Optional[float] = None, n: int = 1, stop: Union[None, str, Sequence[str]] = None,
                 seed: Optional[int] = None) -> Union[str, List[str]]:
        """The text generated after `prompt` (the prompt itself is not included): a string, or a list of `n`.

        `length` counts characters; `temperature` 0 is greedy; `stop` (a string or up to 4) ends a continuation
        right before the stop string; continuation i of a seeded call uses seed + i, so a seed reproduces it.
        """
        self._predicts("generate")
        params = self.params(prompt, length, temperature, top_k, top_p, n, stop, seed)  # checks n too
        pieces = self._pieces(params, self._pool.take(self, params.n))  # (rows that do not fit: a ParamError now)
        texts = [""] * n
        for i, piece in pieces:
            texts[i] += piece
        return texts[0] if n == 1 else texts

    def stream(self, prompt: str = "", length: int = 500, temperature: float = 1.0, top_k: Optional[int] = None,
               top_p: Optional[float] = None, n: int = 1, stop: Union[None, str, Sequence[str]] = None,
               seed: Optional[int] = None) -> Iterator[Union[str, Tuple[int, str]]]:
        """Like `generate`, but yields the text as it is made: pieces (strings), or for n > 1 (index, piece). The
        settings are checked here, at the call (a generator would have raised at its first next())."""
        self._predicts("stream")
        params = self.params(prompt, length, temperature, top_k, top_p, n, stop, seed)
        self._pool.keep(params.n, self._pool.take(self, params.n))  # (rows that do not fit: a ParamError here, too;
        # the batcher waits in the pool for the first next(), so a stream never read holds none)
        return (piece if n == 1 else (i, piece) for i, piece in self._pieces(params))

    def _pieces(self, p: GenerationParams, batcher: Optional[Batcher] = None) -> Iterator[Tuple[int, str]]:
        batcher = batcher or self._pool.take(self, p.n)
        try:
            for i, spec in enumerate(p.rows()):
                batcher.add(spec, tag=i)
            while batcher.active:
                for row, piece in batcher.step(BLOCK):
                    if piece:
                        yield row.tag, piece
        finally:  # also when a stream is abandoned half-way: the rows leave, the batcher is kept for the next call
            for row in batcher.all_rows:
                batcher.remove(row)
            self._pool.keep(p.n, batcher)

    def score(self, text: str, dynamic: bool = False) -> EvalResult:
        """What `charnn eval` reports for `text`: nats and bits per character, perplexity, counts. With
        `dynamic=True`, its score under dynamic evaluation (`charnn eval --dynamic`'s dynamic column, default
        settings); this model's weights are not changed either way."""
        self._predicts("score", text, empty=False)
        check_flag("dynamic", dynamic)
        if dynamic:
            return adapted_copy(self.net, self.tokenizer, text, self.device).result
        return evaluate_text(self.net, self.tokenizer, text, self.device)

    def adapt(self, text: str, lr: Optional[float] = None, decay: Optional[float] = None,
              segment: Optional[int] = None) -> "Model":
        """A new Model whose weights took dynamic evaluation's steps over `text` (`charnn sample --adapt`):
        generate from it to write more in the text's style. This model is left as it was. lr, decay and
        segment default to `charnn eval --dynamic`'s."""
        self._predicts("adapt", text, empty=False)
        given = {k: v for k, v in {"lr": lr, "decay": decay, "segment": segment}.items() if v is not None}
        with keyword_names({"dynamic-lr": "lr", "dynamic-decay": "decay"}):
            cfg = DynamicConfig(**given).validate()
        adapted = adapted_copy(self.net, self.tokenizer, text, self.device, cfg)
        model = Model(adapted.model, self.tokenizer, self.device, self.path,
                      {"step": self.step, "best_val_loss": self.best_val_loss}, self.int8)
        model.adaptation, model.label = adapted, self.label
        model.twin = self.twin or (bool(self.labels) and self.label is None)  # a labelled model's label-free twin
        return model

    def for_label(self, name: str) -> "Model":
        """A model trained with --label-by, as label `name` (`charnn sample --label`): generate, stream and score
        in that label's voice. This model is left as it was."""
        self._predicts("for_label")
        self._whole("for_label")
        from charnn.scoring.classify import label_id

        with keyword_names({"label": "for_label"}):
            which = label_id(self.labels, name)
        labelled = Model(self.net.for_label(which), self.tokenizer, self.device, self.path,
                         {"step": self.step, "best_val_loss": self.best_val_loss}, self.int8)
        labelled.label = name
        return labelled

    def classify(self, texts: Union[str, Sequence[str]], uniform_prior: bool = False) -> Union[dict, List[dict]]:
        """`charnn classify --json` for each text: the most likely `label`, and every label's log-likelihood
        (nats), nats/char and posterior, by Bayes' rule with the training label frequencies as the prior (or
        a uniform one); a classifier (`train --classifier`) gives every label's posterior from its softmax. A
        string gives one dict, a list a list."""
        from charnn.scoring.classify import classifier_for

        self._whole("classify")
        check_flag("uniform_prior", uniform_prior)
        one = isinstance(texts, str)
        texts = texts if one or not hasattr(texts, "__iter__") or isinstance(texts, (bytes, dict)) else list(texts)
        if not one and not (isinstance(texts, list) and all(isinstance(t, str) for t in texts)):
            raise ParamError(f"`texts` must be a string or a list of strings, got {python_shown(texts)}", "texts")
        with keyword_names():  # (the words it shares with `charnn classify` name `label_by`, not --label-by)
            judge = classifier_for(self.net, self.tokenizer, self.labels, self.device, bool(uniform_prior))
        scores = judge.classify([texts] if one else list(texts))
        out = [s.to_dict() for s in scores]
        return out[0] if one else out

    @torch.inference_mode()
    def token_logprobs(self, text: str, top: int = 1) -> Dict[str, list]:
        """Per-token log-probabilities of `text` under the model, in OpenAI's `logprobs` shape: tokens,
        token_logprobs, top_logprobs (the `top` most likely tokens and the text's own, as OpenAI's `logprobs: N`
        gives up to N + 1), text_offset. The first token is conditioned on the start id, as `score` and sampling
        condition it, so the log-probabilities add up to -score(text).nats (for a text under 4,096 tokens, which
        `score` reads as one stream; a longer one it reads in streams from a zero state, as `charnn eval` does).
        Each token is shown as the text it stands for (joined, they are the text; an unknown character as itself,
        a subword byte piece that continues a character as "", the character going to the piece it starts in); an
        alternative that is a byte piece as "bytes:\\xNN", as OpenAI names one. The text runs through the model a
        chunk at a time: memory does not grow with its length beyond the answer itself."""
        self._predicts("token_logprobs", text, top=(top, 0, TOP_LOGPROBS))
        ids = np.asarray(self.tokenizer.encode(text), dtype=np.int64)
        with self._lock_tables:  # each token's text and the characters that start in it, once per model (two
            if self._pieces_by_id is None:  # threads' first calls: one makes them, the other waits for both)
                self._chars_by_id = np.array([self.tokenizer.token_chars(np.array([i]))
                                              for i in range(self.tokenizer.vocab_size)], dtype=np.int64)
                self._pieces_by_id = self.tokenizer.names()
        pieces = self._pieces_by_id
        with self._lock_scoring:
            picked, best, best_lp = scan(self.net, self.tokenizer, ids, self.device, max(1, top))
        picked[~np.isfinite(picked)] = -1e30
        tokens, offsets = token_spans(self._chars_by_id[ids], text)
        tops = [{pieces[b]: lp for b, lp in zip(ids_, lps_)} for ids_, lps_ in
                zip(best[:, :top].tolist(), best_lp[:, :top].tolist())]
        for t, token, lp in zip(tops, tokens, picked.tolist()):
            t.setdefault(token, lp)
        return {"tokens": tokens, "token_logprobs": picked.tolist(), "top_logprobs": tops, "text_offset": offsets}

    def surprisal(self, text: str, top_k: int = 5) -> "Surprisal":
        """Every token's surprisal (`.nats`, an array: -log p given all before it, the first token after the
        start id as `score` reads it) and its `top_k` alternatives (`.top_ids`, `.top_logprobs`, `.top(i)`), as
        `charnn show` colours text. On a text `score` takes as one stream (under 4,096 tokens) `.total` equals
        score(text).nats."""
        self._predicts("surprisal", text, top_k=(top_k, 1, None))
        from charnn.inspect.surprisal import surprisal

        with self._lock_scoring:
            return surprisal(self.net, self.tokenizer, text, self.device, top_k)

    def activations(self, text: str) -> "Activations":
        """Every recurrent unit's activation after each token of `text` (`.values`, an array (tokens, units);
        `.names`: "L1 h 17", "L2 c 3", ...; `.tokens`), read after the start id (`charnn show --cells`). A
        Model from `for_label` reads it as its label."""
        self._predicts("activations", text)
        from charnn.inspect.activations import activations

        return activations(self.net, self.tokenizer, text, self.device)

    def gradient_reach(self, text: str, max_k: int = 100, positions: int = 64, seed: int = 0) -> "GradientReach":
        """How much the loss at a position depends on the input k steps back: `.norms[k]`, the gradient norm
        averaged over up to `positions` positions of `text`, k = 0..max_k (`charnn show --gradients`)."""
        self._predicts("gradient_reach", text, max_k=(max_k, 1, None), positions=(positions, 1, None),
                       seed=(seed, 0, None))
        from charnn.inspect.gradients import gradient_reach

        return gradient_reach(self.net, self.tokenizer, text, self.device, max_k, positions, seed=seed)

    def _predicts(self, method: str, text=..., empty: bool = True,
                  **counts: Tuple[object, int, Optional[int]]) -> None:
        """Refuse, in one line: what needs next-character predictions on a classifier (`train --classifier`), a
        text that is not a string (or is empty, unless `empty`: a score of nothing was NaN), a count (value,
        least, most) out of its range (they failed in the tokenizer, torch or numpy)."""
        if text is not ... and not isinstance(text, str):
            raise ParamError(f"`text` must be a string, got {python_shown(text)}", "text")
        if text == "" and not empty:
            raise ParamError(f"`text` is empty: {method}() needs at least one character", "text")
        for name, (value, least, most) in counts.items():
            if not (is_integer(value) and value >= least and (most is None or value <= most)):
                where = f"from {least} to {most}" if most is not None else f">= {least}"
                raise ParamError(f"`{name}` must be an integer {where}, got {python_shown(value)}", name)

    def _whole(self, method: str) -> None:
        """A Model from for_label speaks as one label: it cannot weigh the labels against each other."""
        if self.label is not None:
            raise CharnnError(f"this Model speaks as label {self.label!r} (for_label): call {method}() on the Model "
                              "charnn.load returned")
        if self.twin:  # (it said "trained without labels")
            raise CharnnError(f"this Model was adapted (adapt) as its labelled model's label-free twin: call "
                              f"{method}() on the Model charnn.load returned (for_label(name).adapt(text) adapts as a "
                              "label)")

    def __getattr__(self, name: str):
        """A sequence-to-sequence model's call on this one: say what it is, not Python's AttributeError."""
        if name in ("transduce", "attention"):
            what = ("a classifier: it labels whole texts (classify)" if self.kind == "classifier" else
                    "a language model: it continues text (generate, stream)")
            raise WrongKind(f"{self.path} is {what}; {name}() is a sequence-to-sequence model's (train --pairs)")
        raise AttributeError(f"'Model' object has no attribute {name!r}")

    @property
    def generates(self) -> bool:
        """Whether it writes text (a language model); a classifier (`train --classifier`) labels texts only."""
        return self._reads_text

    @property
    def created(self) -> int:
        return self._created

    def batcher(self, capacity: int) -> Batcher:
        """A row-wise generation loop over this model (what the server steps all its clients in)."""
        return Batcher(self.net, self.tokenizer, self.device, capacity, int8=self.int8)


def load(path_or_run: Optional[str] = None, device: str = "auto", int8: bool = False) -> Union[Model, "Seq2SeqModel"]:
    """A checkpoint (.pt), a run folder (its best.pt, else last.pt) or, with None, the newest run under
    ./checkpoints, loaded safely (weights only) onto `device` (auto: CUDA, then MPS, else CPU). A language
    model comes back as a `Model`; a sequence-to-sequence one (`train --pairs`) as a `Seq2SeqModel`.
    `int8=True` (a language model on the CPU): generate with int8 recurrent weights, as `charnn sample --int8`
    (faster; a close approximation of the model, benchmarks/SAMPLING.md); scoring stays exact."""
    if path_or_run is not None and not isinstance(path_or_run, (str, os.PathLike)):
        raise CharnnError(f"charnn.load takes a checkpoint's or a run's path (a str or a Path) or None, not "
                          f"{type(path_or_run).__name__} {path_or_run!r:.40}")
    with keyword_names():  # (the errors it shares with `charnn sample` name `device`, not --device)
        return load_model(path_or_run, plain_value(device), int8, "int8=True", "load")


def load_model(path_or_run: Optional[str], device: str, int8: bool, flag: str = "--int8", command: str = "sample"):
    """`load`, whose errors spell int8 as `flag` and say to `command` without it (`charnn sample` and `charnn
    serve`: --int8). A model int8 generation cannot run (a min cell's width not a multiple of 64, a CPU without
    exact int8 products) is refused here, not at its first generate()."""
    check_flag("int8", int8)
    # (the newest run, for `charnn sample` and `serve`: the newest that writes text; charnn.load(): the newest)
    path = resolve_checkpoint(None if path_or_run is None else str(path_or_run),
                              use=None if command == "load" else "generate")
    dev = resolve_device(device)
    if int8 and dev.type != "cpu":
        raise CharnnError(f"int8 generation is for the CPU; on {dev.type} leave it out")
    data = load_checkpoint(path)
    if is_seq2seq(data):
        if int8:
            raise CharnnError(f"{path} is a sequence-to-sequence model; int8 generation is for language models")
        from charnn.api.seq2seq import Seq2SeqModel
        return Seq2SeqModel(*build_seq2seq(data, dev), dev, path, data)
    model, tokenizer = build_from_checkpoint(data, dev)
    from charnn.models import registry
    kind = registry.for_model(model)
    if int8 and (kind is None or kind.generates):  # (a classifier is refused by what asks it to generate)
        try:
            registry.stepper_factory(model, True)(1)  # (the int8 weights are made again when it generates)
        except CharnnError as e:
            raise CharnnError(str(e).replace("sample without --int8", f"{command} without {flag}")
                              .replace("--int8", flag)) from None
    return (ClassifierModel if kind is not None and kind.name == "classifier" else Model)(model, tokenizer, dev, path,
                                                                                       data, int8)


def _hidden(self):
    raise AttributeError  # (a property that raises AttributeError hands the lookup to __getattr__)


class ClassifierModel(Model):
    """A classifier (`train --classifier`): `classify` and `info`; what needs next-character predictions it lacks
    (reading it raises WrongKind, an AttributeError, so `hasattr` is False)."""

    kind = "classifier"
    LACKS = ("generate", "stream", "score", "adapt", "for_label", "token_logprobs", "surprisal", "activations",
             "gradient_reach")
    for _method in LACKS:
        locals()[_method] = property(_hidden)
    del _method

    def __getattr__(self, name: str):
        if name in self.LACKS:
            raise WrongKind(f"{self.path} is a classifier (train --classifier): it labels whole texts and predicts "
                            f"no characters, so it has no {name}(); use classify()")
        return super().__getattr__(name)


__all__ = ["ClassifierModel", "Model", "load"]

