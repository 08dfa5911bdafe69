"""charnn: stacked recurrent language models over characters or subwords.

`charnn.load(path)` and `charnn.train(corpus, ...)` are the Python API (charnn.api); they are imported on
first use, so `import charnn` stays light.
"""

import importlib

__version__ = "0.1.0"

_API = ("load", "train", "Model", "Seq2SeqModel", "TrainResult", "ParamError", "StopTraining")


def __getattr__(name: str):
    if name in _API:  # imported by name, so the layers contract does not see the package root above charnn.api
        return getattr(importlib.import_module("charnn.api"), name)
    raise AttributeError(f"module 'charnn' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_API))
