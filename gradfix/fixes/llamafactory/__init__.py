"""Fixes for LLaMA-Factory (``llamafactory``)."""
