"""Fixes for transformers ``Trainer`` loss normalisation (``transformers.training_args``, ``transformers.trainer``)."""
