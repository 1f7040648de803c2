"""tests/test_kernels.py's and tests/test_fp8.py's Triton tests on the CPU through Triton's interpreter
(``TRITON_INTERPRET=1``): the kernels' own indexing, masks, row walks and TMA tiles, checked on every
CI run, which has no GPU (the GPU
box runs the same tests compiled); and the built-in model's fast network against the reference with
those kernels in it (tests/test_fast.py's channels-last case), which checks how the head wires them.
A subprocess, because the interpreter is chosen when the kernels are decorated, at import;
`.ci/run` installs the Triton it needs (tests/conftest.py works around that version's
interpreter). The interpreter runs each program in numpy, so the upsample + argmax kernel, the
slowest there, runs its two smaller class counts only, and the fast network the built-in only."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton", reason="Triton is not installed (.ci/run installs it for this test)")
pytestmark = pytest.mark.skipif(
    torch.cuda.is_available(), reason="a GPU is here: tests/test_kernels.py runs the compiled kernels on it"
)

SELECTION = "(triton and not (upsample and 150)) or (optimized_network_equals_original and True and camvid)"
# every test of that selection but the bfloat16 normalize cases, which the interpreter's rounding
# skips, and tests/test_fp8.py's per-image-amax cases, which run on Hopper GPUs only:
# the count fails this test when a selected test is skipped or no longer selected
EXPECTED_PASSED = 45


@pytest.mark.timeout(2400)  # the interpreter runs each program in numpy: minutes on a loaded 2-core CI machine
def test_the_triton_kernels_pass_their_tests_under_the_interpreter():
    tests = [str(Path(__file__).with_name(name)) for name in ("test_kernels.py", "test_fast.py", "test_fp8.py")]
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests, "-k", SELECTION],
        env=env, capture_output=True, text=True, timeout=3000,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    passed = re.search(r"(\d+) passed", proc.stdout)
    assert passed and int(passed.group(1)) == EXPECTED_PASSED, proc.stdout[-3000:]
