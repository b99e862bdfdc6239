"""openrlhf-sft-microbatch-mean-dp: OpenRLHF 0.10.3 SFT normalises each micro-batch's
loss by that micro-batch's token count summed over the data-parallel ranks. The
rank part is right (0.10.3 fixed it); gradient-accumulation micro-batches are
still weighted equally whatever their token counts.

0.10.3's ``SFTLoss.forward`` already takes the normalisers (``dp_size``,
``batch_num_tokens``, ``global_batch_size``); fit passes per-micro-batch ones. The
fix passes the window's instead (``_window``), exactly what 0.10.4's fit passes,
so the rank correction is not applied twice.
"""

from . import _sft

TARGET = _sft.TARGET
REPLACES = _sft.REPLACES
HITS, UNREACHED = _sft.HITS, _sft.UNREACHED
CALL = "**get_loss_batch_info(self.strategy, shifted_loss_mask)"


def probe(module):
    return _sft.probe_with(module, [_sft.LOOP_MARK, CALL], _sft.NORMALISER_SIGNATURE,
                           {"dp_size": 1, "batch_num_tokens": 4.0}, 1.0,
                           "each micro-batch's loss is normalised by its own token count (over all ranks)")


def apply(module, patcher):
    _sft.apply_with(module, patcher, _sft.window_normalisers)
