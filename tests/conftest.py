"""Shared fixtures: a tiny corpus the tests write themselves and a tiny trained run."""

import os
import random

import pytest
import torch

from charnn.config import ModelConfig, TrainConfig
from charnn.corpus import Corpus
from charnn.train import train

torch.set_num_threads(2)


def make_text(n_lines: int = 400, seed: int = 0) -> str:
    """Repetitive English-like lines: learnable in a few dozen steps."""
    rng = random.Random(seed)
    words = "the cat sat on a mat and the dog ran to the red barn while birds sang".split()
    return "\n".join(" ".join(rng.choice(words) for _ in range(8)) for _ in range(n_lines)) + "\n"


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Encoded corpora and downloads go to a temporary cache, never the user's ~/.cache/charnn."""
    old = os.environ.get("CHARNN_CACHE")
    os.environ["CHARNN_CACHE"] = str(tmp_path_factory.mktemp("charnn-cache"))
    yield
    if old is None:
        os.environ.pop("CHARNN_CACHE", None)
    else:
        os.environ["CHARNN_CACHE"] = old


TINY_MODEL = dict(cell="lstm", layers=2, hidden=64, embed=16, dropout=0.0)
TINY_TRAIN = dict(batch_size=8, seq_len=32, lr=2e-2, warmup=5, eval_every=50, max_steps=150, device="cpu", seed=3)


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "tiny.txt"
    path.write_text(make_text(), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, corpus_file):
    """A run folder holding best.pt and last.pt of a tiny model trained for 150 steps."""
    out = tmp_path_factory.mktemp("runs")
    text = corpus_file.read_text(encoding="utf-8")
    result = train(Corpus(text, "tiny", str(corpus_file)), ModelConfig(vocab_size=1, **TINY_MODEL),
                   TrainConfig(out=str(out), **TINY_TRAIN))
    return result
