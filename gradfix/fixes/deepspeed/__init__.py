"""Fixes for DeepSpeed (``deepspeed.runtime.zero.stage_1_and_2.DeepSpeedZeroOptimizer``)."""
