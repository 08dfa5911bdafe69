"""Sample previews during training, so one can watch a model learn to spell.

`SamplePreview` is an `on_event` callback: every `every` steps it draws a short sample and hands it to
`write(step, text)`. It leaves training exactly as it found it: the sampler has its own seeded generator,
the global RNG state is saved and restored around it, and the model goes back to train mode, so a run with
previews ends with the same weights as one without.
"""

from __future__ import annotations

from typing import Callable

import torch

from charnn.sampling import SampleConfig, TransduceConfig
from charnn.errors import ConfigError
from charnn.generation.sampler import generate
from charnn.generation.seq2seq import Transducer

PREVIEW_CHARS = 200
PREVIEW_TEMPERATURE = 0.8
PREVIEW_PAIRS = 4  # validation inputs a --pairs run shows with its current outputs


class SamplePreview:
    def __init__(self, model: torch.nn.Module, tokenizer, device: torch.device, every: int,
                 write: Callable[[int, str], None], length: int = PREVIEW_CHARS,
                 temperature: float = PREVIEW_TEMPERATURE, seed: int = 0):
        if every < 1:
            raise ConfigError(f"`--preview-every` must be at least 1, got {every}")
        self.model, self.tokenizer, self.device, self.every, self.write = model, tokenizer, device, every, write
        self.cfg = SampleConfig(length=length, temperature=temperature).validate()
        self.seed = seed  # the same seed every time: successive previews differ only by what was learned

    def __call__(self, kind: str, info: dict) -> None:
        if kind == "step" and info["step"] % self.every == 0:
            self.write(info["step"], self.sample())

    def sample(self) -> str:
        was_training = self.model.training
        cpu_rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None
        try:
            return "".join(generate(self.model, self.tokenizer, self.cfg, self.device, self.seed))
        finally:
            torch.set_rng_state(cpu_rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state_all(cuda_rng)
            self.model.train(was_training)


class PairPreview:
    """The --pairs twin of SamplePreview: every `every` steps, the first few validation inputs and what the
    model now writes for them (greedy), one `input -> output` line each. Decoding draws no random numbers."""

    def __init__(self, model: torch.nn.Module, source_tokenizer, tokenizer, inputs, device: torch.device,
                 every: int, write: Callable[[int, str], None], max_ratio: float):
        if every < 1:
            raise ConfigError(f"`--preview-every` must be at least 1, got {every}")
        self.model, self.every, self.write = model, every, write
        self.inputs = [text for text in inputs if text.strip()][:PREVIEW_PAIRS]
        self.transducer = Transducer(model, source_tokenizer, tokenizer,
                                     TransduceConfig(unknown="skip", precision="fp32"), device, max_ratio)

    def __call__(self, kind: str, info: dict) -> None:
        if kind == "step" and info["step"] % self.every == 0:
            self.write(info["step"], self.sample())

    def sample(self) -> str:
        was_training = self.model.training
        try:
            outputs = [h[0].text if h else "" for h in self.transducer.run((t, "preview") for t in self.inputs)]
        finally:
            self.model.train(was_training)
        return "\n".join(f"{src} -> {out}" for src, out in zip(self.inputs, outputs))
