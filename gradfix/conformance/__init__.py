"""The conformance matrix: DeepSpeed's accumulation, release by release, against plain
PyTorch, without gradfix and with it.

Each case (gradfix.conformance.deepspeed_cases) trains a tiny model a few SGD steps
with one configuration (ZeRO stage, offload, precision, GA, clipping, ranks), one
model output shape and one way of calling backward, and is compared with a plain
PyTorch loop doing the same accumulation. A covering design keeps the case count small
(gradfix.conformance.covering): every pair of axis values appears at least once, and
every triple of ZeRO stage, offload, precision and GA. ``python -m nox -s
conformance`` runs every release and commits ``patches/conformance.json``
(gradfix.conformance.records); the README summarises it and the fast tests check that
every wrong cell is corrected by a patch or listed as a known uncovered bug.
"""
