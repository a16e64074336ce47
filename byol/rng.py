"""The random number generators of a training run, saved into a checkpoint and restored for an exact resume.

rng_state(aug_gen) -> dict holds plain values and tensors only (loadable with `weights_only=True`):
  torch    torch's CPU generator
  augment  the augmentation generator of this process (byol.augment.two_views draws from it)
  python   random's state, numpy: numpy's legacy global state (as lists and numbers)
  cuda     every CUDA device's generator, when CUDA is available
"""

from __future__ import annotations

import random
from typing import Any, cast

import numpy as np
import torch


def rng_state(aug_gen: torch.Generator) -> dict[str, Any]:
    """The state of every generator a training step may draw from (see module docstring)."""
    st = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state())  # the legacy tuple form
    rng: dict[str, Any] = {"torch": torch.get_rng_state(), "augment": aug_gen.get_state(), "python": random.getstate(),
                           "numpy": [st[0], st[1].tolist(), int(st[2]), int(st[3]), float(st[4])]}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def set_rng_state(rng: dict[str, Any], aug_gen: torch.Generator) -> None:
    """Restore what rng_state saved (after a round trip through a checkpoint: tuples come back as lists)."""
    torch.set_rng_state(rng["torch"])
    aug_gen.set_state(rng["augment"])
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in rng["python"]))
    n = rng["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
