"""ds-output-hooks-engine-backward and ds-output-hooks-direct-backward with a real
transformers model in the canonical DeepSpeed loop (dschat_worker.py): the venv's
transformers (LlamaForCausalLM returns loss and logits), DeepSpeed 0.19.2 (engine.backward
and direct backwards mis-scaled) and 0.19.8 (direct backwards only), GA 4, ZeRO-2, fp32."""

from pathlib import Path

import pytest
from helpers import tiered
from tfrun import BUG, MATCH, NOT_CONFIGURED, deepspeed_folder, releases, run_worker

pytestmark = pytest.mark.skipif(not releases(), reason=NOT_CONFIGURED)
WORKER = Path(__file__).resolve().parent / "dschat_worker.py"
# CI: each patch once (engine.backward on a release it corrects, direct backward on the newest
# release); the full tier adds direct backward on 0.19.2.
CASES = tiered([("0.19.2", "engine", "ds-output-hooks-engine-backward"), ("0.19.8", "direct", "ds-output-hooks-direct-backward")],
               full=[("0.19.2", "direct", "ds-output-hooks-direct-backward")])


@pytest.mark.parametrize("deepspeed, backward, patch", CASES)
def test_llama_model_output(deepspeed, backward, patch):
    code, builds = deepspeed_folder(deepspeed)
    newest = next(release for release, folder in releases().items() if folder == "")
    unpatched, patched = (run_worker(WORKER, [code], on, ["--backward", backward], DS_ACCELERATOR="cpu",
                                     TORCH_EXTENSIONS_DIR=str(builds)) for on in (False, True))
    assert unpatched["transformers"] == newest and unpatched["deepspeed"] == deepspeed
    assert unpatched["update_error"] > BUG, unpatched  # 1/GA^2: 75% of the update missing at GA 4
    assert patched["update_error"] < MATCH, patched
    assert patched["gradfix"][patch]["state"] == "applied" and patched["gradfix"][patch]["hits"] == 2 * 4
