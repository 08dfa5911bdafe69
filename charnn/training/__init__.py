"""Training: the trainer loop, exact resume, torchrun processes, metrics.jsonl and sample previews."""
