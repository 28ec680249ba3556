"""Closed triangle surfaces from implicit shapes: the geometry kernel of the synthetic body.

An implicit body is a smooth union of round cones, ellipsoids and rounded boxes (a signed
distance-like function, negative inside, in metres). `extract_surface` polygonises it by
marching tetrahedra on a grid whose cells are locally shrunk around chosen focus points (the
hands, so fingers are resolved without a fine grid everywhere), which always yields a closed,
consistently oriented 2-manifold. `decimate_to` then collapses edges until an exact vertex count
is reached, and `relax_onto` evens the triangles out while keeping vertices on the surface.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

# ---------------------------------------------------------------------------------------
# Implicit primitives


@dataclass(frozen=True)
class Primitive:
    """One solid: kind 'cone' (round cone a->b, radii ra, rb), 'ellipsoid' (centre a,
    radii b), or 'box' (rounded box centre a, half-sizes b, corner radius ra). ``blend`` is the
    smooth-union radius (m) with everything drawn before it; ``part`` the body part (joint index)
    whose bone moves it."""

    kind: str
    a: tuple[float, float, float]
    b: tuple[float, float, float]
    ra: float
    rb: float
    blend: float
    part: int


def primitive_distance(prim: Primitive, p: np.ndarray) -> np.ndarray:
    """Approximate signed distance (N,) in metres from points ``p`` (N,3) to ``prim``."""
    a = np.asarray(prim.a)
    b = np.asarray(prim.b)
    if prim.kind == "cone":
        ab = b - a
        t = np.clip(((p - a) @ ab) / float(ab @ ab), 0.0, 1.0)
        closest = a + t[:, None] * ab
        return np.linalg.norm(p - closest, axis=1) - (prim.ra + (prim.rb - prim.ra) * t)
    if prim.kind == "ellipsoid":
        q = (p - a) / b
        k0 = np.linalg.norm(q, axis=1)
        k1 = np.linalg.norm(q / b, axis=1)
        return k0 * (k0 - 1.0) / np.maximum(k1, 1e-12)
    if prim.kind == "box":
        q = np.abs(p - a) - (b - prim.ra)
        outside = np.linalg.norm(np.maximum(q, 0.0), axis=1)
        inside = np.minimum(q.max(axis=1), 0.0)
        return outside + inside - prim.ra
    raise ValueError(f"unknown primitive kind {prim.kind!r}")


def smooth_min(d1: np.ndarray, d2: np.ndarray, k: float) -> np.ndarray:
    """Polynomial smooth minimum of two distance fields with blend radius ``k`` (m)."""
    if k <= 0:
        return np.minimum(d1, d2)
    h = np.clip(0.5 + 0.5 * (d2 - d1) / k, 0.0, 1.0)
    return d2 + (d1 - d2) * h - k * h * (1.0 - h)


def body_distance(prims: tuple[Primitive, ...], p: np.ndarray) -> np.ndarray:
    """Signed distance-like field (N,) of the smooth union of ``prims`` at points ``p`` (N,3)."""
    d = primitive_distance(prims[0], p)
    for prim in prims[1:]:
        d = smooth_min(d, primitive_distance(prim, p), prim.blend)
    return d


def primitive_bounds(prim: Primitive) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned box (lo, hi) (3,) enclosing the solid ``prim``."""
    a = np.asarray(prim.a)
    b = np.asarray(prim.b)
    if prim.kind == "cone":
        r = max(prim.ra, prim.rb)
        return np.minimum(a, b) - r, np.maximum(a, b) + r
    return a - b - prim.ra, a + b + prim.ra


def body_distance_banded(prims: tuple[Primitive, ...], p: np.ndarray, band: float) -> np.ndarray:
    """`body_distance` where it is below ``band`` (m); elsewhere a value >= ``band`` may stand
    in (same sign, far from the surface). Evaluates each solid only near its bounding box,
    which makes dense grids cheap."""
    order = np.argsort(p[:, 0], kind="stable")
    ps = p[order]
    xs = ps[:, 0]
    d = np.full(len(p), 10.0)  # "far": smooth_min(10, x) == x for any nearby solid
    for prim in prims:
        lo, hi = primitive_bounds(prim)
        margin = band + prim.blend
        i0, i1 = np.searchsorted(xs, [lo[0] - margin, hi[0] + margin])
        sub = ps[i0:i1]
        m = np.nonzero(((sub[:, 1:] >= lo[1:] - margin) & (sub[:, 1:] <= hi[1:] + margin)).all(axis=1))[0] + i0
        if len(m):
            d[m] = smooth_min(d[m], primitive_distance(prim, ps[m]), prim.blend)
    out = np.empty(len(p))
    out[order] = d
    return out


def part_distances(prims: tuple[Primitive, ...], p: np.ndarray, parts: int) -> np.ndarray:
    """(N, parts) distance from each point to the union of the primitives of each part
    (+inf for parts without primitives)."""
    out = np.full((len(p), parts), np.inf)
    for prim in prims:
        out[:, prim.part] = np.minimum(out[:, prim.part], primitive_distance(prim, p))
    return out


def field_gradient(prims: tuple[Primitive, ...], p: np.ndarray, eps: float = 1e-4) -> np.ndarray:
    """Central-difference gradient (N,3) of `body_distance` at ``p`` (N,3)."""
    g = np.empty_like(p)
    for ax in range(3):
        off = np.zeros(3)
        off[ax] = eps
        g[:, ax] = (body_distance(prims, p + off) - body_distance(prims, p - off)) / (2 * eps)
    return g


# ---------------------------------------------------------------------------------------
# Grid with local magnification


@dataclass(frozen=True)
class Magnifier:
    """Shrinks grid cells by ``factor`` inside ``radius`` (m, in the output space) of
    ``centre``; cells fade back to full size by ``fade`` (m) beyond it."""

    centre: tuple[float, float, float]
    radius: float
    factor: float
    fade: float


def warp_points(u: np.ndarray, mags: tuple[Magnifier, ...]) -> np.ndarray:
    """Map grid points ``u`` (N,3) to space: each magnifier pulls points radially towards its
    centre by d(r) = (1-f) r for r < r1 = radius/f, then a constant, then fading to 0. The map
    is monotone along every ray, so cells never fold."""
    x = u.copy()
    for m in mags:
        c = np.asarray(m.centre)
        v = u - c
        r = np.linalg.norm(v, axis=1)
        r1 = m.radius / m.factor
        dmax = (1.0 - m.factor) * r1
        r2 = r1 + 0.5 * m.fade
        r3 = r2 + m.fade
        d = np.where(r < r1, (1.0 - m.factor) * r, dmax)
        fall = np.clip((r - r2) / (r3 - r2), 0.0, 1.0)
        d = d * (1.0 - fall * fall * (3.0 - 2.0 * fall))
        x -= (d / np.maximum(r, 1e-12))[:, None] * v
    return x


_KUHN_TETS = np.array(
    [[0, 1, 3, 7], [0, 1, 5, 7], [0, 2, 3, 7], [0, 2, 6, 7], [0, 4, 5, 7], [0, 4, 6, 7]]
)  # corner index = 4*di + 2*dj + dk; each path 000 -> 111 adds one axis at a time


def marching_tetrahedra(
    values: np.ndarray, points: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Zero level set of a grid field as a closed triangle mesh.

    values: (nx, ny, nz) field, negative inside. points: (nx, ny, nz, 3) positions of the grid
    points. Returns vertices (V,3), faces (F,3) int64 with normals pointing to positive values,
    and each vertex's grid-space position (V,3) (cell units), used for sizing.
    """
    nx, ny, nz = values.shape
    f = np.where(np.abs(values) < 1e-9, 1e-9, values).astype(np.float64)  # no exact zeros
    inside = f < 0
    corners = [(di, dj, dk) for di in (0, 1) for dj in (0, 1) for dk in (0, 1)]
    cell_in = np.stack(
        [inside[di:nx - 1 + di, dj:ny - 1 + dj, dk:nz - 1 + dk] for di, dj, dk in corners]
    )
    crossing = cell_in.any(axis=0) & ~cell_in.all(axis=0)
    ci, cj, ck = np.nonzero(crossing)
    flat = f.reshape(-1)
    pts = points.reshape(-1, 3)
    grid = np.stack(np.unravel_index(np.arange(flat.size), f.shape), axis=1).astype(np.float64)
    corner_idx = np.stack(
        [((ci + di) * ny + (cj + dj)) * nz + (ck + dk) for di, dj, dk in corners], axis=1
    )
    tri_edges = []  # list of (T,3,2) point-index pairs (inside, outside) per triangle vertex
    for tet in _KUHN_TETS:
        p = corner_idx[:, tet]  # (C,4)
        ins = flat[p] < 0
        n_in = ins.sum(axis=1)
        for count in (1, 3):
            sel = n_in == count
            if not sel.any():
                continue
            ps, ii = p[sel], ins[sel]
            lone = np.argmax(ii if count == 1 else ~ii, axis=1)
            others = np.array([[j for j in range(4) if j != k] for k in range(4)])[lone]
            lone_p = ps[np.arange(len(ps)), lone]
            oth_p = np.take_along_axis(ps, others, axis=1)
            pairs = np.stack([np.repeat(lone_p[:, None], 3, axis=1), oth_p], axis=2)
            tri_edges.append(pairs)
        sel = n_in == 2
        if sel.any():
            ps, ii = p[sel], ins[sel]
            order = np.argsort(~ii, axis=1, kind="stable")  # inside first
            q = np.take_along_axis(ps, order, axis=1)
            a, b, c, d = q[:, 0], q[:, 1], q[:, 2], q[:, 3]
            tri_edges.append(np.stack([np.stack([a, c], 1), np.stack([a, d], 1),
                                       np.stack([b, d], 1)], axis=1))
            tri_edges.append(np.stack([np.stack([a, c], 1), np.stack([b, d], 1),
                                       np.stack([b, c], 1)], axis=1))
    edges = np.concatenate(tri_edges, axis=0)  # (T,3,2)
    lo = np.minimum(edges[..., 0], edges[..., 1])
    hi = np.maximum(edges[..., 0], edges[..., 1])
    keys = lo.astype(np.int64) * flat.size + hi
    uniq, inv = np.unique(keys.reshape(-1), return_inverse=True)
    faces = inv.reshape(-1, 3)
    e_lo, e_hi = uniq // flat.size, uniq % flat.size
    t = flat[e_lo] / (flat[e_lo] - flat[e_hi])
    verts = pts[e_lo] + t[:, None] * (pts[e_hi] - pts[e_lo])
    gpos = grid[e_lo] + t[:, None] * (grid[e_hi] - grid[e_lo])
    # Orientation in grid space with interpolation kept off the corners: never degenerate.
    tc = np.clip(t, 1e-3, 1 - 1e-3)
    gsafe = grid[e_lo] + tc[:, None] * (grid[e_hi] - grid[e_lo])
    tri = gsafe[faces]
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    ins_pt = grid[edges[:, 0, 0]]  # an inside (or outside) endpoint of the first edge
    first_inside = flat[edges[:, 0, 0]] < 0
    out_dir = np.where(first_inside[:, None], tri[:, 0] - ins_pt, ins_pt - tri[:, 0])
    flip = np.einsum("ij,ij->i", normal, out_dir) < 0
    faces[flip] = faces[flip][:, [0, 2, 1]]
    return verts, faces.astype(np.int64), gpos


def largest_component(verts: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keep the connected component with the most faces; drop unused vertices."""
    parent = np.arange(len(verts))

    def find(a: np.ndarray) -> np.ndarray:
        while True:
            pa = parent[a]
            if np.array_equal(pa, a):
                return a
            parent[a] = parent[pa]
            a = parent[a]

    changed = True
    while changed:
        ra = find(faces[:, 0])
        rb = find(faces[:, 1])
        rc = find(faces[:, 2])
        m = np.minimum(np.minimum(ra, rb), rc)
        before = parent.copy()
        np.minimum.at(parent, ra, m)
        np.minimum.at(parent, rb, m)
        np.minimum.at(parent, rc, m)
        changed = not np.array_equal(before, parent)
    roots = find(faces[:, 0])
    keep_root = np.bincount(roots).argmax()
    faces = faces[roots == keep_root]
    used = np.unique(faces)
    remap = np.full(len(verts), -1)
    remap[used] = np.arange(len(used))
    return verts[used], remap[faces]


# ---------------------------------------------------------------------------------------
# Decimation to an exact vertex count


def decimate_to(
    verts: np.ndarray, faces: np.ndarray, target: int, size: np.ndarray, seam: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Collapse edges of a manifold mesh, shortest first (length / local ``size``), until exactly
    ``target`` vertices remain. Collapses that would break the manifold (link condition), flip a
    face or create a high-valence vertex are refused.

    verts (V,3) m, faces (F,3), size (V,) relative edge length wanted at each vertex.

    seam (V,) bool, for the half of a mirror-symmetric surface (see :func:`mirror_half`): the
    vertices of its open rim, on the mirror plane x = 0. They stay on the plane: a rim edge
    collapses to its midpoint, an edge from a rim vertex inwards onto the rim vertex, and no
    collapse may join two rim vertices through the inside. ``target`` then counts the vertices of
    the mirrored surface, 2 × (vertices) − (rim vertices). Without ``seam`` the mesh must be closed.

    Returns the compacted vertices, faces and the (V,) index of each input vertex in the output
    (-1 for removed ones).
    """
    V = len(verts)
    rim = [False] * V if seam is None else [bool(x) for x in seam]
    pos = [tuple(v) for v in verts.tolist()]
    sz = size.astype(float).tolist()
    face_list = [list(f) for f in faces.tolist()]
    face_alive = [True] * len(face_list)
    vfaces: list[set[int]] = [set() for _ in range(V)]
    for fi, (a, b, c) in enumerate(face_list):
        vfaces[a].add(fi)
        vfaces[b].add(fi)
        vfaces[c].add(fi)
    alive = [True] * V
    stamp = [0] * V
    count = 2 * V - sum(rim) if seam is not None else V  # vertices of the (mirrored) surface
    if target > count:
        raise ValueError(f"cannot decimate {count} vertices up to {target}")

    def nbrs(v: int) -> set[int]:
        s: set[int] = set()
        for fi in vfaces[v]:
            s.update(face_list[fi])
        s.discard(v)
        return s

    def cost(a: int, b: int) -> float:
        pa, pb = pos[a], pos[b]
        d = ((pa[0] - pb[0]) ** 2 + (pa[1] - pb[1]) ** 2 + (pa[2] - pb[2]) ** 2) ** 0.5
        return d / (0.5 * (sz[a] + sz[b]))

    def normal(p0, p1, p2):
        ux, uy, uz = p1[0] - p0[0], p1[1] - p0[1], p1[2] - p0[2]
        vx, vy, vz = p2[0] - p0[0], p2[1] - p0[1], p2[2] - p0[2]
        return (uy * vz - uz * vy, uz * vx - ux * vz, ux * vy - uy * vx)

    def push_all(heap: list) -> None:
        for v in range(V):
            if alive[v]:
                for w in nbrs(v):
                    if w > v:
                        heap.append((cost(v, w), v, w, stamp[v], stamp[w]))
        heapq.heapify(heap)

    heap: list = []
    push_all(heap)
    count_at_push = count
    while count > target:
        if not heap:
            if count == count_at_push:  # a full pass over every edge collapsed nothing
                raise RuntimeError(f"decimation stalled at {count} vertices (target {target})")
            count_at_push = count
            push_all(heap)
        c0, a, b, sa, sb = heapq.heappop(heap)
        if not (alive[a] and alive[b]) or stamp[a] != sa or stamp[b] != sb:
            continue
        if rim[b] and not rim[a]:  # the rim end survives, in place
            a, b = b, a
        along_rim = rim[a] and rim[b]
        # a rim edge removes one vertex of the mirrored surface, any other collapse two
        if count - (1 if along_rim else (2 if seam is not None else 1)) < target:
            continue
        shared = vfaces[a] & vfaces[b]
        if len(shared) != (1 if along_rim else 2):
            continue
        na, nb = nbrs(a), nbrs(b)
        opposite = set()
        for fi in shared:
            opposite.update(face_list[fi])
        opposite -= {a, b}
        if (na & nb) != opposite or len(na | nb) - 2 > 11:
            continue
        if rim[a] and not along_rim and any(rim[w] for w in nb - na - {a}):
            continue  # the new edge would cut across the inside from rim to rim
        if rim[a] and not along_rim:
            newp = pos[a]
        else:
            newp = tuple(0.5 * (pa + pb) for pa, pb in zip(pos[a], pos[b]))
        ok = True
        for v in (a, b):
            for fi in vfaces[v] - shared:
                tri = face_list[fi]
                p_old = [pos[t] for t in tri]
                p_new = [newp if t in (a, b) else pos[t] for t in tri]
                n0 = normal(*p_old)
                n1 = normal(*p_new)
                l0 = sum(x * x for x in n0) ** 0.5
                l1 = sum(x * x for x in n1) ** 0.5
                if l1 < 1e-14 or sum(x * y for x, y in zip(n0, n1)) < 0.3 * l0 * l1:
                    ok = False
                    break
            if not ok:
                break
        if not ok:
            continue
        for fi in shared:
            face_alive[fi] = False
            for t in face_list[fi]:
                vfaces[t].discard(fi)
        for fi in vfaces[b]:
            tri = face_list[fi]
            tri[tri.index(b)] = a
            vfaces[a].add(fi)
        vfaces[b] = set()
        alive[b] = False
        pos[a] = newp
        sz[a] = 0.5 * (sz[a] + sz[b])
        stamp[a] += 1
        count -= 1 if along_rim or seam is None else 2
        for w in nbrs(a):
            heapq.heappush(heap, (cost(a, w), a, w, stamp[a], stamp[w]))
    keep = np.array(alive)
    remap = np.full(V, -1)
    remap[keep] = np.arange(int(keep.sum()))
    out_faces = np.array([face_list[i] for i in range(len(face_list)) if face_alive[i]])
    return np.array(pos)[keep], remap[out_faces], remap


# ---------------------------------------------------------------------------------------
# Relaxation


def vertex_normals(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals (V,3) of an outward-oriented mesh."""
    fn = np.cross(verts[faces[:, 1]] - verts[faces[:, 0]], verts[faces[:, 2]] - verts[faces[:, 0]])
    vn = np.zeros_like(verts)
    for k in range(3):
        np.add.at(vn, faces[:, k], fn)
    return vn / np.maximum(np.linalg.norm(vn, axis=1, keepdims=True), 1e-12)


def relax_onto(
    verts: np.ndarray, faces: np.ndarray, prims: tuple[Primitive, ...], iterations: int = 10,
    step: float = 0.5,
) -> np.ndarray:
    """Tangential Laplacian smoothing alternated with Newton projection onto the implicit
    surface: evens out triangle sizes while keeping the shape. Returns new vertices (V,3)."""
    v = verts.copy()
    ii = np.concatenate([faces[:, 0], faces[:, 1], faces[:, 2], faces[:, 1], faces[:, 2], faces[:, 0]])
    jj = np.concatenate([faces[:, 1], faces[:, 2], faces[:, 0], faces[:, 0], faces[:, 1], faces[:, 2]])
    deg = np.bincount(ii, minlength=len(v)).astype(float)
    for _ in range(iterations):
        avg = np.zeros_like(v)
        for ax in range(3):
            avg[:, ax] = np.bincount(ii, weights=v[jj, ax], minlength=len(v)) / deg
        n = vertex_normals(v, faces)
        delta = avg - v
        delta -= np.einsum("ij,ij->i", delta, n)[:, None] * n
        v = v + step * delta
        v = project_onto(v, prims, steps=2)
    return v


def project_onto(p: np.ndarray, prims: tuple[Primitive, ...], steps: int = 3) -> np.ndarray:
    """Newton steps moving points ``p`` (N,3) onto the zero set of `body_distance`."""
    q = p.copy()
    for _ in range(steps):
        d = body_distance(prims, q)
        g = field_gradient(prims, q)
        gg = np.maximum(np.einsum("ij,ij->i", g, g), 1e-6)
        q -= (d / gg)[:, None] * g
    return q


def edge_manifold_report(faces: np.ndarray) -> tuple[int, int]:
    """(number of undirected edges not shared by exactly two faces, number of directed edges
    used twice — an orientation clash). Both are 0 for a closed, consistently oriented mesh."""
    directed = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    und = np.sort(directed, axis=1)
    _, counts = np.unique(und, axis=0, return_counts=True)
    _, dcounts = np.unique(directed, axis=0, return_counts=True)
    return int((counts != 2).sum()), int((dcounts != 1).sum())


# ---------------------------------------------------------------------------------------
# Left-right symmetry

MIRROR = np.array([-1.0, 1.0, 1.0])  # x -> -x: the body frame's left-right mirror


def symmetrize(verts: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """(V, 3) vertices made exactly mirror-symmetric under the involution ``pairs``: each vertex
    moves to the mean of itself and its partner's mirror image, so mirror(out[pairs]) == out
    (vertices paired with themselves land on the midline, x = 0)."""
    v = np.asarray(verts, np.float64)
    return (v + v[pairs] * MIRROR) / 2


def boundary_vertices(faces: np.ndarray, num_vertices: int) -> np.ndarray:
    """(V,) bool: vertices on an edge that only one face uses (the rim of an open mesh)."""
    directed = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    und, counts = np.unique(np.sort(directed, axis=1), axis=0, return_counts=True)
    out = np.zeros(num_vertices, bool)
    out[und[counts == 1].reshape(-1)] = True
    return out


def mirror_half(verts: np.ndarray, faces: np.ndarray, seam: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Close a half surface with its mirror image (x -> -x).

    verts (H, 3), faces (F, 3) of an open surface on the x >= 0 side whose rim ``seam`` (H,) bool
    lies on the plane x = 0. The mirror copies every vertex but the seam's and reverses the copied
    faces' orientation; the seam vertices are shared. Returns the closed surface's vertices
    (2H - S, 3) (the half's first, in order), faces (2F, 3) and the (2H - S,) mirror involution.
    """
    n = len(verts)
    inner = np.flatnonzero(~seam)
    copy = np.arange(n)
    copy[inner] = n + np.arange(len(inner))
    pairs = np.concatenate([copy, inner])
    full = np.vstack([verts, verts[inner] * MIRROR])
    return full, np.vstack([faces, copy[faces][:, [0, 2, 1]]]), pairs
