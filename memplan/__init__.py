"""memplan: how much GPU memory will this training run need, and what must change so it fits."""

__version__ = "0.1.0"
