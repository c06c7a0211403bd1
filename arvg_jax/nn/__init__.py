"""Generic layers shared by several families (attention with a KV cache, ...)."""
