"""Kinematics: the pure maths of posing a skinned body model (SMPL / SMPL+H), fused for large batches.

Everything here is a pure function of float32 torch tensors on one device (CPU or CUDA); the model files,
configuration and joint sets live in ``mpt_data.body``. Units are metres and radians, axes are the model's.

The forward is smplx's ``lbs()`` reorganised for throughput, not a different model:

* rest joints are linear in the shape coefficients, so the joint regressor is applied to the template and
  the shape directions once, at load time (``joint_shapedirs``), never to the posed mesh;
* the kinematic chain is composed one tree depth at a time (``chain_levels``): all joints at one depth in
  one batched (3, 3) @ (3, 4) product, ~16 levels for SMPL+H instead of 52 sequential joints;
* the chain starts with the root at the origin, so the posed joints and the skinned vertices come out
  root-centred (pelvis at 0) with no subtraction afterwards (rows of the skinning weights sum to one);
* per chunk of ``VERTEX_CHUNK`` vertices (``plan_skinning``), shape and pose blend shapes are two accumulating matrix products
  into one (3 c, B) buffer, and the per-vertex blend of the joints' 3x4 transforms is one (c, u) @ (u, 12 B)
  product over the u joints that move the chunk followed by four multiply-adds over contiguous (c, 3, B) slabs, all in cache; vertices are
  vertex-major and batch-last until they are copied to the (B, V, 3) output, because the pose-corrective
  product, the largest of the forward, reads its (3 V, 9 (J - 1)) matrix once per block and is faster with
  the batch as its short inner dimension.

Results depend on the batch's shape: BLAS and vectorised transcendental functions pick their code path by
the size of the operands (see ``mpt_data.body.BodyModel.forward_torch``, which always calls ``lbs`` at one
fixed block size for that reason).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

VERTEX_CHUNK = 256  # vertices skinned at a time (see lbs)


def chain_levels(parents: Sequence[int] | np.ndarray) -> list[tuple[list[int], list[int]]]:
    """The kinematic tree by depth: for depth 1, 2, ... the (joints, their parents) at that depth.

    parents: (J,) parent index of each joint, -1 for the root (joint 0); a parent comes before its child
    in no particular order, but the tree must be connected and acyclic (ValueError otherwise).
    """
    parents = [int(p) for p in parents]
    depth = [-1] * len(parents)
    if not parents or parents[0] != -1:
        raise ValueError("joint 0 must be the root (parent -1)")
    depth[0] = 0
    for _ in range(len(parents)):  # at most J passes settle every depth, in any joint order
        for j, p in enumerate(parents[1:], start=1):
            if not 0 <= p < len(parents) or p == j:
                raise ValueError(f"joint {j} has parent {p}, outside the tree")
            if depth[j] < 0 and depth[p] >= 0:
                depth[j] = depth[p] + 1
    if min(depth) < 0:
        raise ValueError(f"joints {[j for j, d in enumerate(depth) if d < 0]} are not connected to the root")
    out = []
    for d in range(1, max(depth) + 1):
        joints = [j for j in range(len(parents)) if depth[j] == d]
        out.append((joints, [parents[j] for j in joints]))
    return out


def rodrigues(axis_angle: torch.Tensor) -> torch.Tensor:
    """(N, 3) axis-angle (radians, axis times angle) -> (N, 3, 3) rotation matrices.

    R = I + sin(a) K + (1 - cos(a)) K^2 with K the cross-product matrix of the unit axis; the angle is
    taken as |v + 1e-8| as in smplx, so a zero rotation gives the identity without a division by zero.
    """
    angle = torch.linalg.vector_norm(axis_angle + 1e-8, dim=1, keepdim=True)  # (N, 1)
    axis = axis_angle / angle
    s, c = torch.sin(angle), torch.cos(angle)
    x, y, z = axis.unbind(1)
    zero = torch.zeros_like(x)
    k = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=1).reshape(-1, 3, 3)
    eye = torch.eye(3, dtype=axis_angle.dtype, device=axis_angle.device)
    return eye + s[:, :, None] * k + (1 - c)[:, :, None] * torch.bmm(k, k)


def compose_chain(
    rotations: torch.Tensor, rest_joints: torch.Tensor, levels: Sequence[tuple[Sequence[int], Sequence[int]]]
) -> torch.Tensor:
    """World transforms of every joint, root at the origin.

    rotations: (B, J, 3, 3) rotation of each joint relative to its parent.
    rest_joints: (B, J, 3) rest-pose joint positions (model axes, metres).
    levels: ``chain_levels(parents)``.
    Returns (B, J, 3, 4): [R | t] with R the joint's world rotation and t its posed position relative
    to the posed root (so t of joint 0 is exactly 0).
    """
    b, nj = rotations.shape[:2]
    world = torch.empty((b, nj, 3, 4), dtype=rotations.dtype, device=rotations.device)
    world[:, 0, :, :3] = rotations[:, 0]
    world[:, 0, :, 3] = 0
    for joints, parents in levels:
        # Local transform [R_j | rest_j - rest_parent], composed onto the parent's world transform.
        local = torch.cat([rotations[:, joints], (rest_joints[:, joints] - rest_joints[:, parents])[..., None]], -1)
        parent = world[:, parents]
        level = torch.matmul(parent[..., :3], local)  # (B, n, 3, 4)
        level[..., 3] += parent[..., 3]
        world[:, joints] = level
    return world


def pose_features(rotations: torch.Tensor) -> torch.Tensor:
    """(B, J, 3, 3) joint rotations -> (B, 9 (J - 1)): the flattened R_j - I of joints 1..J-1, the input of
    the pose-corrective blend shapes (the root's rotation moves the whole body and has none)."""
    eye = torch.eye(3, dtype=rotations.dtype, device=rotations.device)
    return (rotations[:, 1:] - eye).reshape(rotations.shape[0], -1)


@dataclass(frozen=True)
class SkinningPlan:
    """Skinning weights cut for ``lbs``: consecutive vertices in chunks, each with the joints that move it.

    chunks: per chunk of ``VERTEX_CHUNK`` consecutive vertices (the last one shorter), (joints (u,) int64 the
    only joints with a non-zero weight on the chunk's vertices, weights (c, u) float32 those weights).
    """

    num_vertices: int
    chunks: tuple[tuple[torch.Tensor, torch.Tensor], ...]


def plan_skinning(weights: np.ndarray, device: torch.device | str = "cpu", chunk: int = VERTEX_CHUNK) -> SkinningPlan:
    """``SkinningPlan`` of (V, J) skinning weights. A vertex is moved by a few joints (at most 4 in SMPL) and
    a model's consecutive vertices lie near each other on the surface, so a chunk of 256 needs ~10 of SMPL+H's
    52 joint transforms (measured on the synthetic body) and its blend is a product ~5x smaller than dense.
    Any vertex order gives the same result; only the speed depends on it."""
    weights = np.asarray(weights)
    chunks = []
    for s in range(0, weights.shape[0], chunk):
        block = weights[s: s + chunk]
        joints = np.flatnonzero((block != 0).any(axis=0))
        chunks.append((torch.tensor(joints, dtype=torch.int64, device=device),
                       torch.tensor(block[:, joints], dtype=torch.float32, device=device)))
    return SkinningPlan(int(weights.shape[0]), tuple(chunks))


def lbs(
    betas: torch.Tensor,
    pose: torch.Tensor,
    v_template: torch.Tensor,
    shapedirs: torch.Tensor,
    posedirs: torch.Tensor | None,
    joints_template: torch.Tensor,
    joint_shapedirs: torch.Tensor,
    levels: Sequence[tuple[Sequence[int], Sequence[int]]],
    skinning: SkinningPlan,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Linear blend skinning of a batch, root-centred: smplx's ``lbs()`` with the joint root at the origin.

    B samples, V vertices, J joints, nb shape coefficients, P = 9 (J - 1); float32 on one device.

    betas: (B, nb) shape coefficients.
    pose: (B, 3 J) axis-angle rotation of each joint relative to its parent, root first (radians).
    v_template: (3 V, 1) rest-pose vertices, flattened vertex-major (x0, y0, z0, x1, ...).
    shapedirs: (3 V, nb) shape directions, one column per coefficient, rows as ``v_template``.
    posedirs: (3 V, P) pose correctives, columns indexed by ``pose_features``, rows as ``v_template``;
        None for a model without them (its product would only add zeros).
    joints_template: (J, 3) rest joints of the template (``J_regressor @ v_template``).
    joint_shapedirs: (nb, 3 J) the joint regressor applied to each shape direction.
    levels: ``chain_levels(parents)`` of the model's kinematic tree.
    skinning: ``plan_skinning(weights)`` of the (V, J) skinning weights (rows summing to 1).
    out: (B, V, 3) tensor to write the vertices into, or None for a new one.

    Returns (vertices (B, V, 3), joints (B, J, 3)): posed, relative to the posed root joint (joint 0 at 0).
    """
    b = pose.shape[0]
    nv, nj = skinning.num_vertices, joints_template.shape[0]
    rot = rodrigues(pose.reshape(-1, 3)).reshape(b, nj, 3, 3)
    feat_t = pose_features(rot).T if posedirs is not None else None  # (P, B)
    j_rest = (joints_template.reshape(1, -1) + betas @ joint_shapedirs).reshape(b, nj, 3)
    world = compose_chain(rot, j_rest, levels)  # (B, J, 3, 4)
    joints = world[..., 3].clone()
    # Skinning transforms: x -> R (x - rest_j) + t, i.e. [R | t - R rest_j], laid out (J, 4, 3, B) so that the
    # per-vertex blend is a (c, u) @ (u, 12 B) product whose column k of every 3x4 is a contiguous (3, B) slab.
    world[..., 3] -= torch.matmul(world[..., :3], j_rest[..., None])[..., 0]
    rows = world.permute(1, 3, 2, 0).reshape(nj, 12 * b)
    betas_t = betas.T
    verts = out if out is not None else torch.empty((b, nv, 3), dtype=pose.dtype, device=pose.device)
    # Vertex chunks keep the blend shapes (3 c, B) and the blended transforms (c, 12 B) in cache: unchunked,
    # the transforms are 48 bytes per vertex and sample, written and read back from memory.
    v0 = 0
    for joint_ids, weights in skinning.chunks:
        v1 = v0 + weights.shape[0]
        rows3 = slice(3 * v0, 3 * v1)
        v_posed = torch.addmm(v_template[rows3], shapedirs[rows3], betas_t)  # (3 c, B)
        if posedirs is not None:
            v_posed.addmm_(posedirs[rows3], feat_t)
        vp = v_posed.reshape(v1 - v0, 3, 1, b)
        blended = torch.mm(weights, rows[joint_ids]).reshape(v1 - v0, 4, 3, b)
        x = blended[:, 3] + blended[:, 0] * vp[:, 0]
        x += blended[:, 1] * vp[:, 1]
        x += blended[:, 2] * vp[:, 2]
        verts[:, v0:v1].copy_(x.permute(2, 0, 1))
        v0 = v1
    return verts, joints
