"""byol.rng: every generator a step draws from comes back exactly, through a checkpoint file."""

from __future__ import annotations

import random

import numpy as np
import torch

from byol.rng import rng_state, set_rng_state


def draws(gen: torch.Generator) -> tuple:
    return (torch.rand(3).tolist(), torch.rand(3, generator=gen).tolist(), random.random(),
            np.random.rand(2).tolist())


def test_state_round_trips_through_a_weights_only_file(tmp_path):
    gen = torch.Generator().manual_seed(5)
    torch.manual_seed(1)
    random.seed(2)
    np.random.seed(3)
    torch.save(rng_state(gen), tmp_path / "rng.pt")
    first = draws(gen)
    draws(gen)  # move every generator on
    other = torch.Generator().manual_seed(99)
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True), other)
    assert draws(other) == first
