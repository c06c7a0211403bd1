"""Per-family quantization plumbing: stages, layer coverage, token groups, norm folding."""
