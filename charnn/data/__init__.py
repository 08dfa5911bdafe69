"""Text in, token ids out: find and read corpus files, encode them once into a cache, and cut batches.

sources (files and folders, encodings) -> corpus (what to train on) -> encode/charstream (ids on disk, cached
in cache) -> batches (contiguous streams for stateful BPTT); catalog downloads the named public corpora.
"""
