"""Which number format the model's matmuls run in, decided by what the device does natively.

Low precision pays only where the hardware has it: on a GPU (bf16 where supported, else fp16),
and on a CPU with AVX512-BF16 or AMX, where oneDNN's bf16 matmuls run ~2.6x faster than fp32
(405 against 156 GFLOP/s on the 2-core Zen 4 of docs/results.md, stop 37). On a CPU without
them torch emulates bf16 and a matmul is *slower* than in fp32, so ``auto`` keeps fp32 there.
Autocast casts copies, so the weights and the optimizer stay fp32; the task casts its logits to
fp32 before every loss, and :func:`full_precision` keeps the heads and similarity matrices fp32.
"""

from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("auto", "fp32", "bf16")


def cpu_has_native_bf16() -> bool:
    """True where this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX), not in emulation.

    torch's probes are private (``torch.cpu._is_*``): a torch without them answers False, the safe side.
    """
    probes = (getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return any(bool(probe()) for probe in probes if probe is not None)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``; None means fp32 throughout.

    ``bf16`` asked for explicitly is honoured on any CPU (slow in emulation, but the user's
    choice, e.g. to reproduce a run); on a GPU without bf16 it is an error, not a silent fp16.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return None
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16
        if precision == "bf16":
            raise ValueError(f"precision bf16: {torch.cuda.get_device_name(device)} has no bf16; use auto (fp16) or fp32")
        return torch.float16
    if device.type == "cpu" and (precision == "bf16" or cpu_has_native_bf16()):
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` at ``dtype`` on ``device``, or a no-op context for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def precision_name(dtype: torch.dtype | None) -> str:
    """The name the training record stores for what actually ran (``auto`` resolved)."""
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def full_precision(like: torch.Tensor) -> torch.autocast:
    """Autocast off on ``like``'s device, for the few small computations bf16 would blur.

    The trunk's matmuls are where the time goes; the heads and the similarity matrices cost
    nothing beside them, and their outputs - ranking scores, indexed vectors, contrastive
    logits - are where bf16's 8-bit mantissa would show.
    """
    return torch.autocast(like.device.type, enabled=False)
