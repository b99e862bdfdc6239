"""Fixes for OpenRLHF's loss normalisation (``openrlhf.trainer``)."""
