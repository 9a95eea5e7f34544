"""dsm-engine: a kernel-optimised training engine for mathematical-reasoning language models."""

__version__ = "0.1.0"
