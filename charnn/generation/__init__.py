"""Generation: the streaming sampler and the token-drawing loops (temperature, top-k, top-p, CUDA graphs)."""
