"""Turning what a host holds (numpy arrays, torch tensors) into contiguous [T, E] arrays plus a
wire dtype, without copying when the input is already contiguous. torch is never imported
unless the caller passed a torch tensor (it is then already imported)."""
import sys

import numpy as np

from .errors import BadDTypeError, ClientArgumentError, SizeMismatchError
from .types import DType

_DTYPE_NAMES = {
    "fp32": DType.FP32, "float32": DType.FP32, "f32": DType.FP32,
    "bf16": DType.BF16, "bfloat16": DType.BF16,
    "fp16": DType.FP16, "float16": DType.FP16, "f16": DType.FP16, "half": DType.FP16,
}

# The numpy element type a Session hands out for each wire dtype (bf16 as its bit pattern).
NUMPY_DTYPE = {DType.FP32: np.dtype(np.float32), DType.BF16: np.dtype(np.uint16), DType.FP16: np.dtype(np.float16)}


def parse_dtype(dtype):
    """DType from a DType, a name ("bf16", "float16", ...) or a numpy dtype (float32/float16)."""
    if isinstance(dtype, DType):
        return dtype
    if isinstance(dtype, int) and not isinstance(dtype, bool):
        try:
            return DType(dtype)
        except ValueError:
            raise BadDTypeError(f"dtype {dtype} is not a moe_dtype (0 fp32, 1 bf16, 2 fp16)") from None
    if isinstance(dtype, str):
        key = dtype.lower()
    else:
        try:
            key = np.dtype(dtype).name
        except TypeError:
            key = str(dtype).rsplit(".", 1)[-1].lower()  # torch.bfloat16 -> "bfloat16"
    if key not in _DTYPE_NAMES:
        raise BadDTypeError(f"dtype {dtype!r} is not supported: use fp32, bf16 or fp16")
    return _DTYPE_NAMES[key]


def _is_torch_tensor(x):
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _from_torch(t, dtype):
    import torch  # already imported by whoever made `t`
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.contiguous()
    if t.dtype == torch.bfloat16:
        if dtype not in (None, DType.BF16):
            raise BadDTypeError(f"a torch.bfloat16 tensor cannot be sent as {dtype.label}")
        return t.view(torch.int16).numpy().view(np.uint16), DType.BF16
    if t.dtype not in (torch.float32, torch.float16):
        raise BadDTypeError(f"tensor dtype {t.dtype} is not supported: use float32, bfloat16 or float16")
    return t.numpy(), dtype


def as_logits(logits, dtype=None):
    """(array [T, E] C-contiguous, DType). 1-D input is one token. ``dtype`` declares how to
    read the elements: needed for bf16 held as uint16/int16 bit patterns."""
    wire = None if dtype is None else parse_dtype(dtype)
    if _is_torch_tensor(logits):
        logits, wire = _from_torch(logits, wire)
    arr = np.asarray(logits)
    kind = arr.dtype
    if wire is None:
        if kind == np.float32:
            wire = DType.FP32
        elif kind == np.float16:
            wire = DType.FP16
        elif kind.name == "bfloat16":  # ml_dtypes / jax
            wire = DType.BF16
        elif kind in (np.uint16, np.int16):
            raise BadDTypeError(f"a {kind} array needs dtype='bf16' (or 'fp16') to say what its bits are")
        else:
            raise BadDTypeError(f"logits dtype {kind} is not supported: use float32, float16, or bf16 bits "
                                f"as uint16 with dtype='bf16' (convert with .astype(np.float32))")
    else:
        ok = {DType.FP32: kind == np.float32,
              DType.FP16: kind == np.float16 or kind in (np.uint16, np.int16),
              DType.BF16: kind.name == "bfloat16" or kind in (np.uint16, np.int16)}[wire]
        if not ok:
            raise BadDTypeError(f"logits of dtype {kind} cannot be sent as {wire.label}")
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    elif arr.ndim != 2:
        raise ClientArgumentError(f"logits must be [tokens, num_experts]; got shape {arr.shape}")
    if not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr)
    return arr, wire


def address(arr):
    return arr.__array_interface__["data"][0]


def as_token_ids(token_ids, tokens):
    """A C-contiguous int32 or int64 array of ``tokens`` token ids (the two widths the wire
    carries, kept as given). Other integer arrays and lists are widened to int64."""
    if _is_torch_tensor(token_ids):
        token_ids = token_ids.detach().cpu().contiguous().numpy()
    arr = np.asarray(token_ids)
    if arr.dtype.kind not in "iu":
        if arr.size == 0 and arr.dtype.kind == "f":  # np.asarray([]) is float64
            arr = arr.astype(np.int64)
        else:
            raise ClientArgumentError(f"token_ids must be integers (int32 or int64); got {arr.dtype}")
    if arr.dtype not in (np.int32, np.int64) or arr.dtype.byteorder == ">":
        if arr.dtype.kind == "u" and arr.size and int(arr.max()) > np.iinfo(np.int64).max:
            raise ClientArgumentError("token_ids hold a value past int64")
        arr = arr.astype(np.int64)
    arr = arr.reshape(-1) if arr.ndim != 1 else arr
    if arr.shape[0] != tokens:
        raise SizeMismatchError(f"token_ids has {arr.shape[0]} entries for {tokens} tokens")
    return np.ascontiguousarray(arr)


def as_mask(mask, tokens):
    """A C-contiguous uint8 array of ``tokens`` padding flags (1: padding row, 0: token); bool
    arrays are viewed as their bytes, which are 0 and 1."""
    if _is_torch_tensor(mask):
        mask = mask.detach().cpu().contiguous().numpy()
    arr = np.asarray(mask)
    if arr.size == 0:  # np.asarray([]) is float64
        arr = arr.astype(np.uint8)
    if arr.dtype == np.bool_:
        arr = np.ascontiguousarray(arr).view(np.uint8)
    elif arr.dtype != np.uint8:
        if arr.dtype.kind not in "iu":
            raise ClientArgumentError(f"mask must be bool or uint8; got {arr.dtype}")
        if arr.size and (int(arr.min()) < 0 or int(arr.max()) > 255):
            raise ClientArgumentError("mask values must fit a byte (0: token, 1: padding)")
        arr = arr.astype(np.uint8)
    arr = arr.reshape(-1) if arr.ndim != 1 else arr
    if arr.shape[0] != tokens:
        raise SizeMismatchError(f"mask has {arr.shape[0]} entries for {tokens} tokens")
    return np.ascontiguousarray(arr)
