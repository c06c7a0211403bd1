"""GPU kernels (Pallas Triton) of the samplers, each with its XLA fallback beside it."""
