"""`charnn.load(...)` of a sequence-to-sequence checkpoint -> `Seq2SeqModel`: transduce lines and score pairs from
Python, with the code `charnn transduce` and `charnn eval` run (`charnn.generation.seq2seq.Transducer`,
`charnn.reports.pairs`)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import torch

from charnn.api.params import ParamError, check_flag, keyword_names
from charnn.errors import WrongKind
from charnn.sampling import DECODE_BATCH, TransduceConfig, python_shown
from charnn.data.pairs import Pair, PairFile
from charnn.generation.seq2seq import Hypothesis, Transducer

Output = Union[str, List[str], Tuple[str, float], List[Tuple[str, float]]]
LM_ONLY = ("generate", "stream", "token_logprobs", "surprisal", "adapt", "classify", "for_label",
           "gradient_reach")  # (Model's calls, a language model's)


class Seq2SeqModel:
    """An encoder-decoder and its two vocabularies. Make one with `charnn.load` on a `--pairs` checkpoint."""

    kind = "seq2seq"

    def __init__(self, net, source_tokenizer, tokenizer, device: torch.device, path: Path, data: dict):
        self.net, self.source_tokenizer, self.tokenizer = net.eval(), source_tokenizer, tokenizer
        self.device, self.path = device, Path(path)
        self.name = self.path.parent.name if self.path.name in ("best.pt", "last.pt") else self.path.stem
        self.pairs: dict = data.get("pairs") or {}
        self.max_ratio = float(self.pairs.get("max_ratio", 4.0))
        self.step, self.best_val_loss = data.get("step"), data.get("best_val_loss")

    def __repr__(self) -> str:
        return f"Seq2SeqModel({self.name!r}, {self.path}, on {self.device})"

    def __getattr__(self, name: str):
        """A language model's call on this one: say what it is, not Python's AttributeError."""
        if name in LM_ONLY:
            raise WrongKind(f"{self.path} is a sequence-to-sequence model (train --pairs): it has no {name}(), "
                            "which is a language model's; it has transduce() and score()")
        raise AttributeError(f"'Seq2SeqModel' object has no attribute {name!r}")

    @property
    def info(self) -> dict:
        """What `charnn info --json` reports about the checkpoint."""
        from charnn.reports.info import describe
        return describe(str(self.path))

    def transduce(self, inputs: Union[str, Sequence[str]], beam: int = 1, n_best: int = 1,
                  length_penalty: float = 0.0, temperature: Optional[float] = None, top_k: Optional[int] = None,
                  top_p: Optional[float] = None, seed: Optional[int] = None, max_length: Optional[int] = None,
                  batch_size: int = DECODE_BATCH, unknown: str = "error", scores: bool = False,
                  precision: str = "auto") -> Union[Output, List[Output]]:
        """The output for an input string (a list of outputs for a list of inputs, in order): greedy, beam search
        (`beam`), or samples (`temperature`, `top_k`, `top_p`, `seed`). With `n_best` > 1 each output is a list
        of the best first; with `scores` each is (text, log-probability). Raises CharnnError for characters the
        model does not know (or drops them with unknown="skip"). `precision`: fp32, bf16, or auto (bf16 where
        this machine decodes a batch faster in it, measured once and remembered: charnn.generation.precision)."""
        with keyword_names():
            cfg = TransduceConfig(beam=beam, n_best=n_best, length_penalty=length_penalty, temperature=temperature,
                                  top_k=top_k, top_p=top_p, seed=seed, max_length=max_length,
                                  batch_size=batch_size, unknown=unknown, precision=precision).validate()
        check_flag("scores", scores)
        single = isinstance(inputs, str)
        if not single and not isinstance(inputs, (list, tuple)):  # (None, 123, b"abc": Python's errors)
            raise ParamError(f"`inputs` must be a string or a list of strings, got {python_shown(inputs)}", "inputs")
        lines = [inputs] if single else list(inputs)
        for i, line in enumerate(lines):
            _one_line(line, f"input {i}", "inputs")
        transducer = Transducer(self.net, self.source_tokenizer, self.tokenizer, cfg, self.device, self.max_ratio,
                                exact_scores=scores)
        with keyword_names():  # (an unknown character's error names unknown="skip", not --unknown skip)
            found = [_shape(h, n_best, scores) for h in transducer.run((t, f"input {i}") for i, t in enumerate(lines))]
        return found[0] if single else found

    def score(self, pairs: Sequence[Tuple[str, str]], beam: int = 1, precision: str = "auto") -> dict:
        """What `charnn eval` reports for (input, target) pairs: nats per target character, exact match, CER, SER,
        and the characters of the inputs and targets outside the model's vocabularies (`unknown_input_chars`,
        `unknown_target_chars`: eval's notes; they were scored without a word)."""
        from charnn.reports.pairs import score_pairs, unknown_chars

        if not isinstance(pairs, (list, tuple)) or not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in pairs):
            raise ParamError(f"`pairs` must be a list of (input, target) pairs, got {python_shown(pairs)}", "pairs")
        if not pairs:
            raise ParamError("`pairs` is empty: there is nothing to score", "pairs")
        for i, (source, target) in enumerate(pairs):
            _one_line(source, f"pair {i}'s input", "pairs")
            _one_line(target, f"pair {i}'s target", "pairs")
        file = PairFile("pairs", [Pair(s, t) for s, t in pairs])
        with keyword_names():
            cfg = TransduceConfig(beam=beam, precision=precision).validate()
        found = score_pairs(self.net, self.source_tokenizer, self.tokenizer, file, cfg, self.device,
                            self.max_ratio).to_dict()
        return {**found, "unknown_input_chars": unknown_chars(self.source_tokenizer, [file]),
                "unknown_target_chars": unknown_chars(self.tokenizer, [file], "target")}

    def activations(self, text: str):
        """The encoder's units after each character of each line of `text` as an input (`.values` (chars, units),
        `.names`, `.tokens`; each line's end shown as a newline), as `charnn show --cells` colours them."""
        from charnn.inspect.activations import encoder_activations

        if not isinstance(text, str):
            raise ParamError(f"`text` must be a string, got {python_shown(text)}", "text")
        return encoder_activations(self.net, self.source_tokenizer, text, self.device)

    def attention(self, line: str):
        """The attention matrix of `line` transduced greedily: `.weights` (output characters and end, input
        characters and end), `.source`, `.output` (`charnn show --attention`)."""
        from charnn.inspect.attention import attention_map

        _one_line(line, "the line", "line")
        with keyword_names({"attention": "line"}):
            return attention_map(self.net, self.source_tokenizer, self.tokenizer, line, self.device, self.max_ratio)


def _one_line(text, what: str, param: str) -> None:
    """One line of text, or a ParamError (a line break would end an input early: its end-of-input token)."""
    if not isinstance(text, str) or "\n" in text or "\r" in text or "\t" in text:
        more = "; give several inputs as a list" if param == "inputs" else ""
        raise ParamError(f"{what} must be one line of text without tabs, got {python_shown(text)}{more}", param)


def _shape(hyps: List[Hypothesis], n_best: int, scores: bool) -> Output:
    items = [(h.text, h.logprob) if scores else h.text for h in hyps] or [("", 0.0) if scores else ""]
    return items if n_best > 1 else items[0]


__all__ = ["Seq2SeqModel"]
