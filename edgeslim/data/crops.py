"""Random crops of image and signal inputs, for training views of a model that takes other sizes.

Function matching and layer reconstruction only need the original (the teacher) and the student to see the same
view; a convolutional model takes a smaller crop as well as the full input, and a step on a crop of half the
height and width costs about a quarter. `crop_size` picks the crop: each of the last two axes of an image batch
[B, C, H, W] (the last axis of a signal batch [B, C, L]) that is at least 64 long is cut to `frac` of its length,
rounded down to a multiple of 32 (the overall stride of most detectors: their feature pyramids add maps of
sizes that must divide) and at least 32. A model that does not take the crop (a fixed reshape, a Linear on
flattened maps) is found by trying it once (`crop_fails`), and then trains on full views.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

MULTIPLE = 32  # crops are multiples of this (stride alignment)
MIN_AXIS = 64  # shorter axes are never cropped


def crop_size(shape: Sequence[int], frac: float) -> tuple[int, ...] | None:
    """The crop of a batch whose samples have `shape` (no batch axis), one size per axis, or None when nothing is
    cropped (`frac` >= 1, a packed row [width], or no axis long enough)."""
    if frac >= 1 or len(shape) < 2:
        return None
    axes = range(max(1, len(shape) - 2), len(shape))  # never the channel axis
    out = list(shape)
    for ax in axes:
        if shape[ax] >= MIN_AXIS:
            out[ax] = max(MULTIPLE, int(shape[ax] * frac) // MULTIPLE * MULTIPLE)
    return tuple(out) if tuple(out) != tuple(shape) else None


def random_crop(x: torch.Tensor, size: Sequence[int], gen: torch.Generator) -> torch.Tensor:
    """One crop of `size` (per sample, as `crop_size` returns) at a random position, the same for the batch `x`."""
    out = x
    for ax, n in enumerate(size, start=1):
        full = x.shape[ax]
        if n < full:
            at = int(torch.randint(0, full - n + 1, (1,), generator=gen))
            out = out.narrow(ax, at, n)
    return out.contiguous()


def crop_fails(models: Sequence[Callable[[torch.Tensor], object]], x: torch.Tensor,
               size: Sequence[int]) -> str | None:
    """Why the `models` cannot run on crops of `size` of the batch `x` (the error's first line), or None."""
    view = random_crop(x, size, torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            for m in models:
                m(view)
    except Exception as e:  # any failure of a third-party graph on another size means: no crops  # noqa: BLE001
        return (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
    return None
