"""openrlhf-sft-epoch-boundary: OpenRLHF 0.10.4-0.11.1 SFT normalises the loss per
optimizer window, but starts its windows afresh in every epoch, while DeepSpeed's
accumulation runs on across epochs. When an epoch's micro-batch count is not a
multiple of GA, the window that spans the boundary is normalised as two windows
(each part as if it were a whole step), and the windows of the following epoch are
shifted against DeepSpeed's.

The fix keeps 0.10.4's formula and gives it windows aligned with DeepSpeed's
(``_window``: read ahead into the next epoch), as 0.11.2 does: fit's own window
normalisers are replaced by those of the real window.
"""

from . import _sft

TARGET = _sft.TARGET
REPLACES = _sft.REPLACES
HITS = "optimizer windows (aligned with DeepSpeed's across epochs)"
UNREACHED = _sft.UNREACHED
# 0.10.4-0.11.1: windows made per epoch straight from the dataloader; 0.11.2 keeps a
# window list across epochs and appends to it.
MARKS = ["iter_grad_accum_global_norm(", "self.train_dataloader, self.strategy, self.strategy.accumulated_gradient"]


def probe(module):
    return _sft.probe_with(module, MARKS, _sft.NORMALISER_SIGNATURE, {"dp_size": 1, "batch_num_tokens": 4.0}, 1.0,
                           "normalisation windows restart at every epoch", fixed_marks=("window.append(",))


def apply(module, patcher):
    _sft.apply_with(module, patcher, _sft.window_normalisers)
