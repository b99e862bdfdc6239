"""Small helpers shared by the test modules."""

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADFIX") and k != "PYTHONPATH"}
    env.update({k: v for k, v in extra.items() if v is not None})
    return env
