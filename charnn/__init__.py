"""charnn: stacked recurrent language models over characters or subwords."""

__version__ = "0.1.0"
