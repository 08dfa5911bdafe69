"""The Python API: `load` a trained model and `generate`, `stream` or `score` text with it; `train` one.

    import charnn
    model = charnn.load("checkpoints/shakespeare")
    print(model.generate("ROMEO:", length=200, temperature=0.8, seed=7))

The command line and `charnn serve` run the same functions underneath.
"""

from charnn.api.model import Model, load
from charnn.api.params import GenerationParams, ParamError
from charnn.api.seq2seq import Seq2SeqModel
from charnn.api.training import train
from charnn.training.stopping import StopTraining
from charnn.training.trainer import TrainResult

__all__ = ["GenerationParams", "Model", "ParamError", "Seq2SeqModel", "StopTraining", "TrainResult", "load", "train"]
