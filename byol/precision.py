"""The one rule for 'auto' precision: bfloat16 where the device runs it, else float32.

Public API
    PRECISIONS                                   the allowed values: auto, fp32, bf16
    resolve_precision(precision, device) -> 'fp32' | 'bf16'
    autocast_dtype(precision, device) -> torch.bfloat16 | None (None: no autocast, fp32)

Training (byol.train) and evaluation (byol.evaluate) both use it, so a run and its evaluation agree on
what 'auto' means.
"""

from __future__ import annotations

import torch

PRECISIONS = ("auto", "fp32", "bf16")


def _bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        # Ampere and newer; torch also counts older GPUs that emulate bfloat16 (its default)
        return bool(torch.cuda.is_bf16_supported())
    try:  # CPUs with AVX-512 BF16 or AMX
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without oneDNN
        return False


def resolve_precision(precision: str, device: str | torch.device) -> str:
    """'auto' -> 'bf16' where the device runs bfloat16 (CUDA GPUs that support it, CPUs with AVX-512 BF16 or
    AMX), else 'fp32'; 'fp32' and 'bf16' are returned as given. ValueError for anything else.

    bfloat16 features of a frozen encoder agree with fp32 ones to a cosine above 0.9999, which moves no
    kNN vote, and run 2-3x faster on such CPUs; pass 'fp32' for bit-for-bit reference numbers.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: choose auto, fp32 or bf16")
    if precision != "auto":
        return precision
    return "bf16" if _bf16_supported(torch.device(device)) else "fp32"


def autocast_dtype(precision: str, device: str | torch.device) -> torch.dtype | None:
    """The autocast dtype for `precision` on `device`, or None for fp32 (see resolve_precision)."""
    return torch.bfloat16 if resolve_precision(precision, device) == "bf16" else None
