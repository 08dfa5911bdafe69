"""Scoring: how likely text is under a model (evaluation, dynamic evaluation, classification, padded rows, pairs)."""
