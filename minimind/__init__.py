"""minimind: a tiny language model trained from nothing, in plain PyTorch."""

__version__ = "0.1.0"
