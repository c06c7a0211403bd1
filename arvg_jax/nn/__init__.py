"""Generic layers shared by several families (RMSNorm, SwiGLU, RoPE, cached attention)."""
