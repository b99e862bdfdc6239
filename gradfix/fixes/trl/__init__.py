"""Fixes for TRL trainers (``trl.trainer``)."""
