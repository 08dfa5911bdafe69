"""The networks: the recurrent language model, the one-token stepper that samples it, and its int8 kernels."""
