"""Shared fixtures (helpers live in `helpers.py`): the CamVid sample location."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))
# Servers the tests start (in process or as `python -m service`) serve no gRPC unless a test asks:
# the default port 8001 is one fixed port, which two servers at once would contend for.
os.environ.setdefault("DEEPLAB_GRPC_PORT", "0")

from helpers import CAMVID  # noqa: E402 (after the path insert above)


@pytest.fixture(scope="session")
def camvid_dir() -> Path:
    if not (CAMVID / "images" / "val").is_dir():
        pytest.skip(f"CamVid sample not found at {CAMVID} (set CAMVID_DIR)")
    return CAMVID


def _interpreter_bool_masks() -> None:
    """Triton 3.9's interpreter labels a comparison's result with its operands' integer type, so
    a comparison of scalars splatted over a block (a row test & a column test, as the kernels' masks
    are) becomes an integer mask, which its load and store reject ("mask has unsupported dtype").
    The compiled kernels are unaffected; under the interpreter, masks are made boolean again."""
    from triton.runtime import interpreter

    builder = interpreter.InterpreterBuilder
    load, store = builder.create_masked_load, builder.create_masked_store

    def boolean(mask):
        return interpreter.TensorHandle(mask.data.astype(bool), mask.dtype)

    def masked_load(self, ptrs, mask, other, cache_policy, is_volatile):
        return load(self, ptrs, boolean(mask), other, cache_policy, is_volatile)

    def masked_store(self, ptrs, value, mask, cache_policy):
        return store(self, ptrs, value, boolean(mask), cache_policy)

    builder.create_masked_load, builder.create_masked_store = masked_load, masked_store


def _interpreter_e4m3_rounding() -> None:
    """Triton 3.9's interpreter rounds float32 to e4m3 (``.to(tl.float8e4nv)``) without carrying a
    mantissa that rounds up into the exponent: 127.8 becomes 64, not 128. The GPU rounds to
    nearest even; under the interpreter, PyTorch's conversion (the same rounding) is used instead."""
    import numpy as np
    import torch
    import triton.language as tl
    from triton.runtime import interpreter

    convert = interpreter._convert_float

    def convert_float(input, input_dtype, output_dtype, rounding_mode):
        if output_dtype == tl.float8e4nv and input_dtype in (tl.float32, tl.float16):
            x = torch.from_numpy(np.ascontiguousarray(input).astype(np.float32))
            return x.to(torch.float8_e4m3fn).view(torch.uint8).numpy()
        return convert(input, input_dtype, output_dtype, rounding_mode)

    interpreter._convert_float = convert_float


if os.environ.get("TRITON_INTERPRET") == "1":
    _interpreter_bool_masks()
    _interpreter_e4m3_rounding()
