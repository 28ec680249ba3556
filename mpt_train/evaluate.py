"""Evaluation: MPJPE, PA-MPJPE, MPVE (mm) of a model over a split, and the mean-pose baseline.

The loop is generic: batches from any loader, a `prepare(batch) -> (inputs, targets)`
function (pre-training: heatmap synthesis with or without MHM-style missing joints;
fine-tuning: images), and a model returning the prediction dict of `MeshRegressor`.
Metric definitions and alignment rules: `mpt_train.metrics`.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
import torch.distributed as dist

from .metrics import MetricAccumulator, evaluate_batch, rotation_onto
from .runtime import autocast_context, choose_device

Prepare = Callable[[dict], tuple[torch.Tensor, dict]]


def extra_regressors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Evaluation joint sets the model carries regressors for (e.g. H36M-17)."""
    cfg = model.cfg
    return {s: model.extra_regressor(s) for s in cfg.eval_joint_sets if model.extra_regressor(s).numel()}


@torch.no_grad()
def evaluate_model(model: torch.nn.Module, batches: Iterable[dict], prepare: Prepare, *,
                   device: torch.device, precision: str = "fp32", max_batches: int = 0,
                   prefix: str = "") -> dict[str, float]:
    """Mean errors in mm over ``batches`` (all of them, or the first ``max_batches``).

    Under torch.distributed, sums and counts are all-reduced so every rank returns the same
    figures over the union of the ranks' batches. Keys: mpjpe, pa_mpjpe, mpve, and
    <set>_mpjpe / <set>_pa_mpjpe for each extra regressor set, each with ``prefix``; plus
    ``{prefix}samples``.
    """
    inner = model.module if hasattr(model, "module") else model
    was_training = inner.training
    inner.eval()
    acc = MetricAccumulator()
    extra = extra_regressors(inner)
    n = 0
    try:
        for i, batch in enumerate(batches):
            if max_batches and i >= max_batches:
                break
            inputs, targets = prepare(batch)
            with autocast_context(device, precision):
                pred = inner(inputs)
            evaluate_batch(acc, pred, targets, inner.cfg.joint_set, extra, prefix=prefix)
            n += int(targets["vertices"].shape[0])
    finally:
        inner.train(was_training)
    names, t = acc.merge_counts()
    if dist.is_available() and dist.is_initialized():
        # every rank must hold the same metric names: gather them first
        all_names: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(all_names, (names, n))
        union = sorted({x for ns, _ in all_names for x in ns})
        full = torch.zeros(2, len(union), dtype=torch.float64)
        for j, name in enumerate(names):
            full[:, union.index(name)] = t[:, j]
        dist.all_reduce(full)
        acc.load_counts(union, full)
        n = sum(c for _, c in all_names)
    out = acc.result()
    out[f"{prefix}samples"] = float(n)
    return out


class MeanPoseModel(torch.nn.Module):
    """Baseline: predicts the same mean joints and mesh (camera frame) for every input (see `mean_pose`)."""

    def __init__(self, reference: torch.nn.Module, joints: torch.Tensor, vertices: torch.Tensor):
        super().__init__()
        self.cfg = reference.cfg
        self.reference = reference  # for its regressors
        self.register_buffer("mean_joints", joints.float())
        self.register_buffer("mean_vertices", vertices.float())

    def extra_regressor(self, joint_set: str) -> torch.Tensor:
        return self.reference.extra_regressor(joint_set)

    def forward(self, inputs: torch.Tensor) -> dict[str, Any]:
        b = inputs.shape[0]
        v = self.mean_vertices.expand(b, -1, -1)
        return {"joints": self.mean_joints.expand(b, -1, -1), "vertices": v, "levels": [v],
                "camera": v.new_zeros(b, 3)}


def procrustes_mean(joints: torch.Tensor, vertices: torch.Tensor, iters: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean body pose with each sample's orientation factored out (generalised Procrustes).

    joints (N, J, 3), vertices (N, V, 3), root-centred, in each view's camera frame. Every
    sample is rotated about the root onto the running mean of the joints, and the means are
    recomputed, ``iters`` times. The result is turned to the best rotation onto the plain
    camera-frame mean, so it stands in the typical view orientation. Returns (J, 3), (V, 3).

    The plain average of camera-frame poses seen from all sides is a shrunken blob rather than
    a body; this is the pose a model that ignores its input should predict.
    """
    def centred(x: torch.Tensor) -> torch.Tensor:
        return x - x.mean(1, keepdim=True)

    j, v = joints.double(), vertices.double()
    ref = j[0:1]
    for _ in range(iters):
        rot, _ = rotation_onto(centred(j), centred(ref))  # (N, 3, 3)
        ref = (j @ rot.transpose(1, 2)).mean(0, keepdim=True)
    mean_v = (v @ rot.transpose(1, 2)).mean(0)
    turn = rotation_onto(centred(ref), centred(j.mean(0, keepdim=True)))[0][0]
    return (ref[0] @ turn.T).float(), (mean_v @ turn.T).float()


@torch.no_grad()
def mean_pose(batches: Iterable[dict], prepare: Prepare, max_batches: int = 0
              ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The baselines' (J, 3) joints and (V, 3) vertices from prepared targets (e.g. the train split).

    "mean_pose": the Procrustes mean (:func:`procrustes_mean`), the body pose a model that ignores
    its input should predict. "mean_camera_frame": the plain average of the camera-frame targets,
    views from all sides averaged into one shrunken shape (a weaker baseline, kept for comparison).
    """
    js, vs = [], []
    for i, batch in enumerate(batches):
        if max_batches and i >= max_batches:
            break
        _, t = prepare(batch)
        js.append(t["joints3d"].float().cpu())
        vs.append(t["vertices"].float().cpu())
    if not js:
        raise ValueError("mean pose: no training samples")
    j, v = torch.cat(js), torch.cat(vs)
    return {"mean_pose": procrustes_mean(j, v), "mean_camera_frame": (j.mean(0), v.mean(0))}


def _checkpoint_on_store(checkpoint: str, shards: str, split: str, device: str, allow_unfrozen: bool, force: bool,
                         storage_options: dict | None, cache_dir: str | None):
    """(device, store-location kwargs, a probe loader of the split, the model on the device, its run config):
    the checkpoint is refused when it was trained on another store, unless ``force``."""
    from .data import LoaderConfig, PairLoader
    from .loading import load_checkpoint_run

    dev = choose_device(device)
    where = dict(storage_options=storage_options or {}, cache_dir=cache_dir)
    probe = PairLoader(LoaderConfig(shards=shards, split=split, num_workers=0, allow_unfrozen=allow_unfrozen,
                                    shuffle=False, drop_last=False, **where))
    model, run_cfg = load_checkpoint_run(checkpoint, expected_fingerprint=probe.fingerprint, force=force)
    return dev, where, probe, model.to(dev), run_cfg


def evaluate_checkpoint(checkpoint: str, shards: str, split: str = "val", *, batch_size: int = 64,
                        mask_ratio: float = 0.3, max_batches: int = 0, baseline: bool = True,
                        baseline_batches: int = 50, num_workers: int = 0, device: str = "auto",
                        allow_unfrozen: bool = False, force: bool = False,
                        picture: str | None = None, picture_samples: int = 6,
                        picture_seed: int = 0, storage_options: dict | None = None,
                        cache_dir: str | None = None) -> dict[str, dict[str, float]]:
    """Score a pre-trained checkpoint on a store split.

    Returns {"clean": metrics, "missing_joints": metrics with MHM-style removed joints
    (ratio ``mask_ratio``, drawn from each sample's key), "mean_pose" and "mean_camera_frame":
    the baselines of :func:`mean_pose`, one prediction for every input}. Metrics in mm.
    ``picture``: also write the input heatmaps, predicted and true meshes of ``picture_samples`` varied
    samples drawn with ``picture_seed`` to this PNG (:func:`comparison_picture`). ``storage_options``,
    ``cache_dir``: how to reach a store given as a URL (see :class:`~mpt_train.data.LoaderConfig`).
    """
    import dataclasses

    from .data import LoaderConfig, PairLoader
    from .inputs import InputConfig, prepare_batch

    dev, where, probe, model, run_cfg = _checkpoint_on_store(checkpoint, shards, split, device, allow_unfrozen,
                                                             force, storage_options, cache_dir)
    inputs_cfg = InputConfig(**run_cfg["inputs"])
    loader_cfg = LoaderConfig(shards=shards, split=split, batch_size=batch_size, num_workers=num_workers,
                              joint_set=model.cfg.joint_set, allow_unfrozen=allow_unfrozen, **where).for_eval(split)
    if PairLoader(loader_cfg).dataset.num_pairs == 0:
        raise ValueError(f"{shards}: split {split!r} has no samples")

    def prep(icfg):
        def f(batch):
            mi = prepare_batch(batch, icfg, dev)
            return mi.tokens, {"joints3d": mi.joints3d, "vertices": mi.vertices, "joints2d": mi.joints2d,
                               "visible": mi.visible}
        return f

    clean = prep(inputs_cfg.without_augmentation())
    out = {"clean": evaluate_model(model, PairLoader(loader_cfg), clean, device=dev, max_batches=max_batches)}
    masked_cfg = dataclasses.replace(inputs_cfg.without_augmentation(mask_ratio), use_mhm=True)
    out["missing_joints"] = evaluate_model(model, PairLoader(loader_cfg), prep(masked_cfg), device=dev,
                                           max_batches=max_batches)
    if baseline:
        train_cfg = dataclasses.replace(loader_cfg, split="train")
        for name, (mj, mv) in mean_pose(PairLoader(train_cfg), clean, max_batches=baseline_batches).items():
            base = MeanPoseModel(model, mj.to(dev), mv.to(dev))
            out[name] = evaluate_model(base, PairLoader(loader_cfg), clean, device=dev, max_batches=max_batches)
    if picture:
        comparison_picture(model, PairLoader(loader_cfg), clean, picture, device=dev, num=picture_samples,
                           seed=picture_seed, heatmap_joint_set=probe.reader.attrs.get("heatmap_joint_set", "coco17"),
                           depth_m=picture_depth(probe.reader.topology()["template"]))
    return out


def varied_samples(pairs: Iterable[tuple[int, int]], num: int, seed: int = 0) -> list[tuple[int, int]]:
    """``num`` varied (mesh, camera) pairs of a split, drawn with ``seed``: the pairs sorted by mesh are cut
    into ``num`` equal runs (a store's meshes follow their sequences, so the runs hold different poses) and
    one pair is drawn from each, on the cameras in turn from a random start. Returned in mesh order."""
    import numpy as np

    pairs = sorted(set((int(m), int(c)) for m, c in pairs))
    if not pairs:
        return []
    rng = np.random.default_rng(seed)
    cameras = sorted({c for _, c in pairs})
    start = int(rng.integers(len(cameras)))
    chosen = []
    for i, run in enumerate(np.array_split(np.arange(len(pairs)), min(num, len(pairs)))):
        want = cameras[(start + i) % len(cameras)]
        on_camera = [j for j in run if pairs[j][1] == want]
        chosen.append(pairs[int(rng.choice(on_camera if on_camera else run))])
    return chosen


PICTURE_ROWS = ("input heatmaps", "prediction", "ground truth")
PICTURE_DEPTH_M = 3.0  # a body's root this far in front of the picture's pinhole
PICTURE_BODY_EXTENT_M = 1.7  # ... for a mesh this long (a standing adult)


def picture_depth(template) -> float:
    """Depth (m) of the root in the comparison picture: PICTURE_DEPTH_M for a body-sized template, scaled with the
    template's longest bounding-box side, so a hand (~0.2 m) fills its tile as a body does."""
    import numpy as np

    t = np.asarray(template, np.float64)
    extent = float((t.max(0) - t.min(0)).max()) if t.size else PICTURE_BODY_EXTENT_M
    return PICTURE_DEPTH_M * min(1.0, extent / PICTURE_BODY_EXTENT_M)


@torch.no_grad()
def comparison_picture(model: torch.nn.Module, batches: Iterable[dict], prepare: Prepare, out_png: str, *,
                       num: int = 6, device: torch.device | str = "cpu", size: int = 224, seed: int = 0,
                       heatmap_joint_set: str = "coco17", depth_m: float = PICTURE_DEPTH_M) -> list[tuple[int, int, float]]:
    """Write a PNG of ``num`` varied held-out samples (:func:`varied_samples`), one column each: the input
    heatmaps the model saw (their maximum, colour-mapped; the 2D skeleton faint grey beneath, for reading
    the pose), the predicted mesh (orange) with the sample's PA-MPJPE (mm, the model's joint set), and the
    true mesh (grey-blue); both meshes in the view's camera frame, moved alike so the true mesh's centre lies on
    the optical axis, its root ``depth_m`` (3 m for a body, :func:`picture_depth`) in front of the same pinhole.
    Rows are labelled on the left. ``batches`` is iterated twice (the pairs, then the chosen samples), so each
    iteration must be a whole pass over the split's store batches, which carry ``mesh`` and ``camera``.
    ``heatmap_joint_set``: the store's, whose skeleton is drawn (COCO-17 or HAND-21). Returns the drawn samples as
    (mesh, camera, PA-MPJPE mm), left to right."""
    import cv2
    import numpy as np

    from mpt_data import conventions, raster  # cv2 + numpy only
    from mpt_data.preview import heatmap_skeleton

    from .metrics import pa_mpjpe

    inner = model.module if hasattr(model, "module") else model
    was_training = inner.training
    inner.eval()
    faces = inner.faces.cpu().numpy()
    skeleton = heatmap_skeleton(heatmap_joint_set)
    k = np.array([[size * 1.3, 0, size / 2], [0, size * 1.3, size / 2], [0, 0, 1]])
    pairs = [p for b in batches for p in zip(b["mesh"].tolist(), b["camera"].tolist())]
    wanted = varied_samples(pairs, num, seed)
    columns: dict[tuple[int, int], np.ndarray] = {}
    drawn: dict[tuple[int, int], float] = {}
    font = cv2.FONT_HERSHEY_SIMPLEX

    def text(img, s, y, scale=0.45):
        cv2.putText(img, s, (6, y), font, scale, (0, 0, 0), 3, cv2.LINE_AA)  # dark rim: readable on any tile
        cv2.putText(img, s, (6, y), font, scale, (255, 255, 255), 1, cv2.LINE_AA)

    try:
        for batch in batches:
            rows = [i for i, p in enumerate(zip(batch["mesh"].tolist(), batch["camera"].tolist()))
                    if p in wanted and p not in columns]
            if not rows:
                continue
            inputs, targets = prepare(batch)
            pred = inner(inputs)
            errors = pa_mpjpe(pred["joints"].float(), targets["joints3d"].float()) * 1000.0
            maps = inputs.heatmaps().float() if hasattr(inputs, "heatmaps") else None
            for i in rows:
                key = (int(batch["mesh"][i]), int(batch["camera"][i]))
                # 2D joints from [-1, 1] crop units (pixel centres at i + 0.5) to the tile's integer-centred pixels
                j2d = ((targets["joints2d"][i].float().cpu().numpy() + 1) * size / 2 - 0.5)
                vis = targets["visible"][i].cpu().numpy()
                tile = raster.draw_skeleton(np.zeros((size, size, 3), np.uint8), j2d, vis, skeleton,
                                            color=(90, 90, 90), thickness=1)
                if maps is not None:
                    tile = raster.heatmap_overlay(tile, maps[i].cpu().numpy(), alpha=1.0)
                else:  # 2D coordinates fed instead of heatmaps: the joints themselves
                    tile = raster.draw_pose(tile, j2d, vis, conventions.JOINT_SETS[heatmap_joint_set], skeleton, 1, 2)
                text(tile, f"mesh {key[0]}, camera {key[1]}", 16)
                meshes = []
                # both meshes moved alike, so the true mesh's centre is on the optical axis (a hand's root, the
                # wrist, is at one end of the hand)
                centre = targets["vertices"][i].float().mean(0).cpu().numpy() * np.array([1.0, 1.0, 0.0])
                for verts, colour in ((pred["vertices"][i], (80, 150, 230)), (targets["vertices"][i], (200, 170, 140))):
                    v = verts.float().cpu().numpy() - centre + np.array([0.0, 0.0, depth_m])
                    canvas = np.full((size, size, 3), 255, np.uint8)
                    meshes.append(raster.render_mesh(canvas, v, faces, k, color=colour, cull_back=False))
                # at the top, where the centred mesh rarely reaches; a white rim keeps it readable where it does
                label = f"PA-MPJPE {float(errors[i]):.1f} mm"
                cv2.putText(meshes[0], label, (6, 18), font, 0.5, (255, 255, 255), 3, cv2.LINE_AA)
                cv2.putText(meshes[0], label, (6, 18), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
                columns[key] = np.concatenate([tile, *meshes], axis=0)
                drawn[key] = float(errors[i])
            if len(columns) == len(wanted):
                break
    finally:
        inner.train(was_training)
    if not columns:
        raise ValueError("comparison picture: no samples")
    label_w = 130
    labels = np.full((len(PICTURE_ROWS) * size, label_w, 3), 235, np.uint8)
    for r, name in enumerate(PICTURE_ROWS):
        for j, word in enumerate(name.split()):
            cv2.putText(labels, word, (8, r * size + size // 2 + 18 * j - 4), font, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    img = np.concatenate([labels, *[columns[p] for p in wanted if p in columns]], axis=1)
    for c in range(1, len(columns) + 1):  # thin separators between the samples and between the rows
        img[:, label_w + c * size - 1] = 180
    for r in range(1, len(PICTURE_ROWS)):
        img[r * size - 1] = 180
    ok, png = cv2.imencode(".png", img)
    if not ok:
        raise OSError(f"{out_png}: could not encode the picture")
    from mpt_data.fileio import atomic_write_bytes

    atomic_write_bytes(out_png, png.tobytes())
    return [(m, c, drawn[(m, c)]) for m, c in wanted if (m, c) in drawn]


def evaluate_rig(checkpoint: str, shards: str, rig: str, split: str = "val", *, batch_size: int = 64,
                 max_batches: int = 0, device: str = "auto", allow_unfrozen: bool = False, force: bool = False,
                 storage_options: dict | None = None, cache_dir: str | None = None) -> dict[str, dict[str, float]]:
    """Score a pre-trained checkpoint on a split's meshes seen by every camera of a rig.

    rig: a rig YAML file or a packaged rig name (``mpt_data.rigs.resolve_rig``). Each mesh of the
    split (once: the store's camera 0 pairs, whose stored view is not used) is projected on the
    device through each camera with the root at the rig's subject position
    (:func:`mpt_train.views.rig_views`: the store's crop and visibility rules), fed as clean
    heatmaps (no masking, noise or jitter), and scored against its 3D in that camera's frame.
    Returns {"<i> <camera name>": metrics per camera, "overall": their sample-weighted mean}
    (mm; every camera sees the same meshes).
    """
    import numpy as np

    from mpt_data import schema
    from mpt_data.rigs import resolve_rig

    from .data import LoaderConfig, PairLoader
    from .inputs import InputConfig, prepare_batch
    from .views import heatmap_joints_key, rig_views

    the_rig = resolve_rig(rig, 8)
    dev, where, probe, model, run_cfg = _checkpoint_on_store(checkpoint, shards, split, device, allow_unfrozen,
                                                             force, storage_options, cache_dir)
    clean = InputConfig(**run_cfg["inputs"]).without_augmentation()
    heatmap_set = probe.reader.attrs.get(schema.ATTR_HEATMAP_JOINT_SET, "coco17")
    key = heatmap_joints_key(model.cfg.joint_set, heatmap_set)
    extra = () if key == "joints3d" else (heatmap_set,)
    loader_cfg = LoaderConfig(shards=shards, split=split, batch_size=batch_size, num_workers=0,
                              joint_set=model.cfg.joint_set, extra_joint_sets=extra, cameras=(0,),
                              allow_unfrozen=allow_unfrozen, **where).for_eval(split)
    if PairLoader(loader_cfg).dataset.num_pairs == 0:
        raise ValueError(f"{shards}: split {split!r} has no samples")
    position = torch.as_tensor(np.asarray(the_rig.subject_position, np.float32))
    out: dict[str, dict[str, float]] = {}
    for i, cam in enumerate(the_rig.cameras):
        K, R, t = (torch.as_tensor(np.asarray(x, np.float32)) for x in (cam.K, cam.R, cam.t))

        def prep(batch, K=K, R=R, t=t):
            seen = rig_views(batch, K, R, t, position, heatmap_set, dev, joints_key=key)
            mi = prepare_batch(seen, clean, dev)
            return mi.tokens, {"joints3d": mi.joints3d, "vertices": mi.vertices, "joints2d": mi.joints2d,
                               "visible": mi.visible}

        out[f"{i} {cam.name}"] = evaluate_model(model, PairLoader(loader_cfg), prep, device=dev,
                                                max_batches=max_batches)
    per = list(out.values())
    n = sum(r["samples"] for r in per)
    out["overall"] = {k: (sum(r[k] * r["samples"] for r in per) / n if k != "samples" else n) for k in per[0]}
    return out
