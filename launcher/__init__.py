"""gangrun's launcher: job spec, torchrun argv, and the targets that run them."""

__version__ = "0.1.0"
