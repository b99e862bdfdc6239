"""Build and install the toy target package ``gftoy`` used to test the engine
without any framework. Each variant is a real install: the package plus a
``gftoy-<version>.dist-info`` folder, as pip --target would lay it out."""

from __future__ import annotations

import textwrap
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent / "fixtures"
CATALOG = FIXTURES / "catalog"
BROKEN_CATALOG = FIXTURES / "catalog_broken"
UNCORRECTABLE_CATALOG = FIXTURES / "catalog_uncorrectable"
PATCH_ID = "toy-accumulate-drop"

_HEAD = '''
class Accumulator:
    """Sums micro-batch gradients over an accumulation window of ``steps``."""

    def __init__(self, steps):
        self.steps = steps
        self.micro_step = 0
        self.total = 0.0

    def result(self):
        return self.total / self.steps
'''

CODE = {
    # gftoy 1.x: only the first and last micro-batch of a window are summed.
    "buggy": _HEAD + '''
    def add(self, grad):
        if self.micro_step == 0 or self.micro_step == self.steps - 1:
            self.total += grad
        self.micro_step += 1
''',
    # gftoy 2.0 (and a fork that back-ported the fix): every micro-batch counts.
    "fixed": _HEAD + '''
    def add(self, grad):
        self.total += grad
        self.micro_step += 1
''',
    # A release whose code no longer looks like the known buggy code.
    "changed": _HEAD + '''
    def add(self, grad, weight=1.0):
        self.grads.append(grad * weight)
''',
}

# Runs two accumulation windows of 4 micro-batches and prints the averages.
WORKLOAD = '''
from gftoy.accum import Accumulator
results = []
for window in range(2):
    acc = Accumulator(4)
    for micro in range(4):
        acc.add(float(window * 10 + micro + 1))
    results.append(acc.result())
print("RESULT", results)
'''


def install(root: Path, version: str, code: str) -> Path:
    """Install gftoy ``version`` with ``code`` (a key of CODE) under ``root``;
    returns the folder to put on PYTHONPATH."""
    site = root / f"gftoy-{version}-{code}"
    if site.exists():
        return site
    package = site / "gftoy"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(f'__version__ = "{version}"\n')
    (package / "accum.py").write_text(textwrap.dedent(CODE[code]))
    dist_info = site / f"gftoy-{version}.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: gftoy\nVersion: {version}\n")
    (dist_info / "INSTALLER").write_text("gradfix-tests\n")
    (dist_info / "RECORD").write_text("")
    return site
