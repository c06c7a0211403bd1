"""Shared layers: quantization-aware Dense, norms, activations, KV caches."""
