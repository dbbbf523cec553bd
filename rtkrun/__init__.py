"""rtkrun: an experiment runner for fast, deterministic diffusion sampling."""

__version__ = "0.1.0"
