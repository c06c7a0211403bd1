"""Built-in datasets (procedural, no downloads)."""

from arvg_jax.data import shapes
from arvg_jax.data.shapes import CLASS_NAMES, NUM_CLASSES, make_dataset

__all__ = ["CLASS_NAMES", "NUM_CLASSES", "make_dataset", "shapes"]
