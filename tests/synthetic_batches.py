"""A resumable synthetic batch stream and the inputs made from it, for the training-loop tests (resume,
non-finite steps, DDP): no store, no heatmaps, so a loop runs in a fraction of a second.
"""

from __future__ import annotations

import torch


class SyntheticSource:
    """A resumable batch stream: batch i is a pure function of (seed, epoch, i).

    Meshes are the template plus a random low-dimensional deformation; 2D joints are a fixed
    projection of the 3D joints. `fail_after` raises after that many batches (a simulated crash).
    """

    def __init__(self, topo_arrays: dict, batch: int, seed: int = 0, batches_per_epoch: int = 5,
                 fail_after: int | None = None, rank: int = 0):
        self.template = torch.as_tensor(topo_arrays["template"])
        self.reg = torch.as_tensor(topo_arrays["regressors/coco17"])
        self.batch, self.seed, self.per_epoch = batch, seed, batches_per_epoch
        self.fail_after, self.rank = fail_after, rank
        self.epoch, self.index, self.served = 0, 0, 0
        g = torch.Generator().manual_seed(1234)
        self.basis = 0.05 * torch.randn(4, *self.template.shape, generator=g)

    def __iter__(self):
        while self.index < self.per_epoch:
            if self.fail_after is not None and self.served >= self.fail_after:
                raise RuntimeError("simulated crash")
            g = torch.Generator().manual_seed(hash((self.seed, self.rank, self.epoch, self.index)) % 2**31)
            coef = torch.randn(self.batch, 4, generator=g)
            verts = self.template + torch.einsum("bk,kvc->bvc", coef, self.basis)
            joints = torch.einsum("jv,bvc->bjc", self.reg, verts)
            j2d = (joints[..., :2] * 0.9 + 1.0) * 112.0
            key = torch.stack([torch.full((self.batch,), self.epoch * 1000 + self.index),
                               torch.arange(self.batch)], 1)
            self.index += 1
            self.served += 1
            yield {"vertices": verts, "joints3d": joints, "joints2d": j2d,
                   "visible": torch.ones(self.batch, 17, dtype=torch.bool), "key": key}
        self.epoch += 1
        self.index = 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict, allow_other_store: bool = False) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])


def synthetic_prepare(tokens: int = 8, token_dim: int = 16):
    """prepare(batch, train) for SyntheticSource: tokens are a fixed linear map of the 2D joints."""
    w = torch.randn(34, tokens * token_dim, generator=torch.Generator().manual_seed(7)) * 0.3

    def prepare(batch: dict, train: bool):
        j = batch["joints2d"] / 112.0 - 1.0
        x = (j.reshape(j.shape[0], 34) @ w).reshape(j.shape[0], tokens, token_dim)
        targets = {k: batch[k] for k in ("vertices", "joints3d", "visible")}
        return x, targets | {"joints2d": j}

    return prepare
