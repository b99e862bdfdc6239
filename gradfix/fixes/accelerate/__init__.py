"""Fixes for Hugging Face Accelerate (``accelerate``)."""
