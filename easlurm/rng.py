"""Capture and restore every RNG state as plain tensors (so checkpoints load with ``weights_only=True``)."""
from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def capture() -> dict[str, Any]:
    """Python, numpy, torch CPU and (when present) CUDA generator states."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": py_version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss": py_gauss},
        "numpy": {"name": np_name, "keys": torch.from_numpy(np.asarray(np_keys).astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture` (CUDA states restored only when CUDA is present)."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def derive_seed(*parts: int) -> int:
    """A 32-bit seed derived from integers (run seed, cycle, member, …) with numpy's SeedSequence."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


# Seed tags: each stage derives its seeds from run.seed and one of these, so no two streams coincide.
#: A member's (cycle, slot) sample stream, and pretraining's and fusion's batches.
SEED_TAG_DATA = 0xDA7A
#: The per-slot discriminator initialisation of the init stage.
SEED_TAG_D = 0xD15C
#: Pretraining's generator initialisation.
SEED_TAG_PRETRAIN = 0x9E7
#: Fusion's attention-branch initialisation.
SEED_TAG_FUSION = 0xF05E
#: An EA child's seed (with run.seed, cycle, generation, slot).
SEED_TAG_CHILD = 0xEA
