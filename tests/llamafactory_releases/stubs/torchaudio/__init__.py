"""Stand-in for torchaudio, which LLaMA-Factory 0.9.5's mm_plugin imports at module level.

torchaudio for the test venv's torch would need a different torch build (several GB);
these tests train on text with an image processor and never load audio. Any use says so.
No dist-info: transformers' ``is_torchaudio_available()`` stays False.
"""


def __getattr__(name):
    raise RuntimeError(f"torchaudio.{name}: the test stub of torchaudio cannot process audio")
