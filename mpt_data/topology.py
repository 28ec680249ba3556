"""A deterministic coarse-mesh hierarchy: V -> about V/4 -> about V/16 vertices.

The transformer predicts vertices on the coarsest level and up-samples them (METRO-style).
Each level *selects* vertices of the level above (down-sampling is indexing) and
up-samples with sparse rows of three barycentric weights (COMA-style):

1. Selection: farthest-point sampling in 3D on the template's vertices of the previous
   level, starting from the vertex nearest their centroid (ties: lowest index). Later
   levels select from earlier selections, so the levels nest.
2. Faces: every full-resolution vertex joins the region of its nearest selected vertex
   along mesh edges (multi-source Dijkstra on the full mesh), and each full-resolution
   triangle whose corners lie in three different regions gives a coarse triangle between
   those three regions' vertices (the dual of the geodesic Voronoi diagram), oriented as
   the triangle it came from; duplicates are dropped. On a closed, evenly sampled surface
   this is a closed triangulation; elsewhere it is at least a drawable triangle soup.
3. Up-sampling: each vertex of the finer level maps to the closest point on the coarse
   triangles (among the 16 with the nearest centroids), as the three corner indices and
   their barycentric weights (>= 0, summing to 1).

All of it is a pure function of the template and faces.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

CANDIDATE_FACES = 16


@dataclass(frozen=True, eq=False)
class Level:
    """One coarse level l >= 1 of the hierarchy.

    vertex_ids: (V_l,) int32 indices into level l-1's vertices (level 0 = the full mesh).
    faces: (F_l, 3) int32 triangles over this level's vertices.
    up_index: (V_{l-1}, 3) int32 indices into this level's vertices.
    up_weight: (V_{l-1}, 3) float32 barycentric weights, rows sum to 1:
        ``x_{l-1} ~= (up_weight[..., None] * x_l[up_index]).sum(-2)``.
    """

    vertex_ids: np.ndarray
    faces: np.ndarray
    up_index: np.ndarray
    up_weight: np.ndarray


def farthest_point_sampling(points: np.ndarray, count: int) -> np.ndarray:
    """(count,) int64 indices of ``points`` (N, 3) chosen by farthest-point sampling from
    the point nearest the centroid; deterministic (ties take the lowest index)."""
    points = np.asarray(points, np.float64)
    n = points.shape[0]
    if not 1 <= count <= n:
        raise ValueError(f"cannot select {count} of {n} points")
    first = int(np.argmin(((points - points.mean(0)) ** 2).sum(1)))
    chosen = np.empty(count, np.int64)
    chosen[0] = first
    diff = points - points[first]
    dist = np.einsum("ij,ij->i", diff, diff)
    for i in range(1, count):
        nxt = int(np.argmax(dist))
        chosen[i] = nxt
        np.subtract(points, points[nxt], out=diff)
        np.minimum(dist, np.einsum("ij,ij->i", diff, diff), out=dist)
    return chosen


def _edges(faces: np.ndarray) -> np.ndarray:
    e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    e = np.sort(e, axis=1)
    return np.unique(e, axis=0)


def geodesic_regions(vertices: np.ndarray, faces: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """(V,) int64: for every vertex, the position in ``seeds`` of the seed nearest along
    mesh edges (Euclidean edge lengths). Vertices unreachable from any seed (separate
    components) take the Euclidean-nearest seed."""
    v = np.asarray(vertices, np.float64)
    n = v.shape[0]
    e = _edges(np.asarray(faces, np.int64))
    lengths = np.linalg.norm(v[e[:, 0]] - v[e[:, 1]], axis=1)
    order = np.argsort(np.concatenate([e[:, 0], e[:, 1]]), kind="stable")
    src = np.concatenate([e[:, 0], e[:, 1]])[order]
    dst = np.concatenate([e[:, 1], e[:, 0]])[order]
    w = np.concatenate([lengths, lengths])[order]
    start = np.searchsorted(src, np.arange(n + 1))
    dist = np.full(n, np.inf)
    label = np.full(n, -1, np.int64)
    heap = []
    for k, s in enumerate(np.asarray(seeds, np.int64)):
        dist[s] = 0.0
        label[s] = k
        heap.append((0.0, k, int(s)))
    heapq.heapify(heap)
    dst_l, w_l, start_l = dst.tolist(), w.tolist(), start.tolist()
    while heap:
        d, k, u = heapq.heappop(heap)
        if d > dist[u] or label[u] != k:
            continue
        for j in range(start_l[u], start_l[u + 1]):
            nd = d + w_l[j]
            t = dst_l[j]
            # Ties go to the lower seed position, so the result does not depend on heap order.
            if nd < dist[t] or (nd == dist[t] and k < label[t]):
                dist[t] = nd
                label[t] = k
                heapq.heappush(heap, (nd, k, t))
    lost = np.flatnonzero(label < 0)
    if lost.size:
        sp = v[np.asarray(seeds)]
        label[lost] = np.argmin(((v[lost, None] - sp[None]) ** 2).sum(-1), axis=1)
    return label


def dual_faces(faces: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(F', 3) int32 coarse triangles from full-resolution ``faces`` whose corners carry
    three different ``labels``; orientation kept, duplicates dropped (first kept)."""
    lab = np.asarray(labels)[np.asarray(faces)]
    keep = (lab[:, 0] != lab[:, 1]) & (lab[:, 1] != lab[:, 2]) & (lab[:, 0] != lab[:, 2])
    tri = lab[keep]
    _, first = np.unique(np.sort(tri, axis=1), axis=0, return_index=True)
    return tri[np.sort(first)].astype(np.int32)


def closest_on_triangles(points: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Closest points on triangles. points (N, 3); a, b, c (N, K, 3) corners of K candidate
    triangles per point. Returns squared distances (N, K) and barycentric weights
    (N, K, 3) of the closest point on each triangle (>= 0, summing to 1)."""
    p = np.asarray(points, np.float64)[:, None, :]
    ab, ac, ap = b - a, c - a, p - a
    # Inside the triangle: the projection onto its plane.
    d00, d01, d11 = (ab * ab).sum(-1), (ab * ac).sum(-1), (ac * ac).sum(-1)
    d20, d21 = (ap * ab).sum(-1), (ap * ac).sum(-1)
    den = d00 * d11 - d01 * d01
    ok = den > 1e-20
    safe = np.where(ok, den, 1.0)
    wv = (d11 * d20 - d01 * d21) / safe
    ww = (d00 * d21 - d01 * d20) / safe
    wu = 1.0 - wv - ww
    bary_in = np.stack([wu, wv, ww], -1)
    inside = ok & (wu >= 0) & (wv >= 0) & (ww >= 0)
    best = np.where(inside, ((p - (a + wv[..., None] * ab + ww[..., None] * ac)) ** 2).sum(-1), np.inf)
    bary = np.where(inside[..., None], bary_in, 0.0)
    # Otherwise: the closest point on one of the three edges.
    corners = (a, b, c)
    for i, j in ((0, 1), (1, 2), (2, 0)):
        s, e = corners[i], corners[j]
        se = e - s
        t = np.clip(((p - s) * se).sum(-1) / np.maximum((se * se).sum(-1), 1e-20), 0.0, 1.0)
        d = ((p - (s + t[..., None] * se)) ** 2).sum(-1)
        better = d < best
        cand = np.zeros_like(bary)
        cand[..., i] = 1.0 - t
        cand[..., j] = t
        bary = np.where(better[..., None], cand, bary)
        best = np.where(better, d, best)
    return best, bary


def upsample_map(fine: np.ndarray, coarse: np.ndarray, coarse_faces: np.ndarray,
                 candidates: int = CANDIDATE_FACES, chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """For each fine vertex (N, 3), the closest point on the coarse mesh: (N, 3) int32
    coarse vertex indices and (N, 3) float32 barycentric weights (see module docstring)."""
    fine = np.asarray(fine, np.float64)
    coarse = np.asarray(coarse, np.float64)
    faces = np.asarray(coarse_faces, np.int64)
    if faces.shape[0] == 0:
        raise ValueError("the coarse level has no faces; the template is too small to coarsen")
    k = min(candidates, faces.shape[0])
    centroids = coarse[faces].mean(1)
    c2 = np.einsum("ij,ij->i", centroids, centroids)
    index = np.empty((fine.shape[0], 3), np.int32)
    weight = np.empty((fine.shape[0], 3), np.float32)
    for s in range(0, fine.shape[0], chunk):
        p = fine[s: s + chunk]
        d = c2[None, :] - 2.0 * (p @ centroids.T)  # squared distance minus |p|^2
        cand = np.argpartition(d, k - 1, axis=1)[:, :k]
        cand = np.sort(cand, axis=1)  # order-independent tie breaking below
        tri = faces[cand]  # (n, k, 3)
        dist, bary = closest_on_triangles(p, coarse[tri[..., 0]], coarse[tri[..., 1]], coarse[tri[..., 2]])
        best = np.argmin(dist, axis=1)
        rows = np.arange(p.shape[0])
        index[s: s + chunk] = tri[rows, best]
        w = bary[rows, best]
        weight[s: s + chunk] = w / w.sum(1, keepdims=True)
    return index, weight


def coarse_hierarchy(template: np.ndarray, faces: np.ndarray, factors: tuple[int, ...] = (4, 4)) -> list[Level]:
    """The coarse levels of a template mesh (V, 3) metres with faces (F, 3).

    factors: the vertex-count reduction of each level (default V -> V/4 -> V/16), rounded.
    Returns one ``Level`` per factor (see the module docstring for the rules).
    """
    template = np.asarray(template, np.float64)
    faces = np.asarray(faces, np.int64)
    if template.ndim != 2 or template.shape[1] != 3 or faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"template (V, 3) and faces (F, 3) expected, got {template.shape}, {faces.shape}")
    levels = []
    ids_in_full = np.arange(template.shape[0])  # the previous level's vertices as full-mesh ids
    prev_positions = template
    for factor in factors:
        count = max(4, int(round(len(ids_in_full) / factor)))
        local = farthest_point_sampling(template[ids_in_full], count)
        local = np.sort(local)  # keep the previous level's vertex order
        seeds = ids_in_full[local]
        labels = geodesic_regions(template, faces, seeds)
        level_faces = dual_faces(faces, labels)
        positions = template[seeds]
        up_index, up_weight = upsample_map(prev_positions, positions, level_faces)
        levels.append(Level(vertex_ids=local.astype(np.int32), faces=level_faces,
                            up_index=up_index, up_weight=up_weight))
        ids_in_full = seeds
        prev_positions = positions
    return levels


def downsample(x: np.ndarray, level: Level) -> np.ndarray:
    """Level l-1 vertices (..., V_{l-1}, 3) -> level l vertices (..., V_l, 3)."""
    return np.asarray(x)[..., level.vertex_ids, :]


def upsample(x: np.ndarray, level: Level) -> np.ndarray:
    """Level l vertices (..., V_l, 3) -> level l-1 vertices (..., V_{l-1}, 3)."""
    x = np.asarray(x)
    return (x[..., level.up_index, :] * level.up_weight[..., None]).sum(-2)


def symmetric_vertex_map(template: np.ndarray, tolerance_m: float = 0.01) -> np.ndarray | None:
    """(V,) index of each template vertex's mirror image (x → -x), or None if the mesh is not symmetric.

    template: (V, 3) metres, body frame with x across the body. The mirror of each vertex is
    its nearest vertex after negating x; None when any mirror is further than ``tolerance_m``.
    """
    t = np.asarray(template, np.float64)
    mirrored = t * np.array([-1.0, 1.0, 1.0])
    idx = np.empty(len(t), np.int64)
    dist = np.empty(len(t))
    step = 1024
    for a in range(0, len(t), step):
        d = ((mirrored[a:a + step, None, :] - t[None, :, :]) ** 2).sum(-1)
        idx[a:a + step] = d.argmin(1)
        dist[a:a + step] = np.sqrt(d.min(1))
    return idx if dist.max() <= tolerance_m else None
