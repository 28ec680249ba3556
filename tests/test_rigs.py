"""Camera rigs (mpt_data.rigs): built-in and packaged rigs, rig files and their errors, the sphere rig for
hands, the recipe's `rig` key, and stores built through a rig (the face rule included)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr

from mpt_data import cameras as cm
from mpt_data import rigs, schema
from mpt_data.recipe import RecipeError, load_recipe, recipe_hash

REPO = Path(__file__).resolve().parents[1]
RIGS_DIR = REPO / "pipelines" / "rigs"
K0 = [[1000.0, 0.0, 500.0], [0.0, 1000.0, 500.0], [0.0, 0.0, 1.0]]


def _camera_dict(centre, name="c", **extra):
    return {"name": name, "image_size": [1000, 1000], "K": [list(r) for r in K0], "centre": list(centre),
            "look_at": [0.0, 0.0, 0.9], **extra}


def _ring(n=3, distance=4.0, height=1.4):
    """A valid rig file's content: n cameras `distance` m from the pelvis horizontally, `height` m above the
    floor, looking at the pelvis (0.9 m)."""
    cams = []
    for i in range(n):
        a = 2 * np.pi * i / n
        cams.append(_camera_dict([float(distance * np.cos(a)), float(distance * np.sin(a)), height], name=f"c{i}"))
    return {"name": "ring", "subject_position": [0.0, 0.0, 0.9], "cameras": cams}


def _write(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False) if not isinstance(data, str) else data)
    return path


def _same_cameras(a: rigs.Rig, b: rigs.Rig, dtype=np.float64) -> None:
    assert [c.name for c in a.cameras] == [c.name for c in b.cameras]
    assert [c.image_size for c in a.cameras] == [c.image_size for c in b.cameras]
    for ca, cb in zip(a.cameras, b.cameras):
        for field in ("K", "R", "t"):
            np.testing.assert_array_equal(getattr(ca, field).astype(dtype), getattr(cb, field).astype(dtype))
    np.testing.assert_array_equal(a.subject_position.astype(dtype), b.subject_position.astype(dtype))


# --------------------------------------------------------------------------------------------
# Built-in and packaged rigs


@pytest.mark.parametrize("n", [1, 2, 4, 8])
def test_standard_rig_is_the_human36m_rig(n):
    rig = rigs.standard_rig(n)
    old = cm.camera_rig(n)
    assert len(rig.cameras) == n and rig.min_distance_m == rigs.DEFAULT_MIN_DISTANCE_M
    for a, b in zip(rig.cameras, old):
        assert a.name == b.name
        np.testing.assert_array_equal(a.R, b.R)
        np.testing.assert_array_equal(a.t, b.t)
    np.testing.assert_array_equal(rig.subject_position, cm.SUBJECT_POSITION)
    rigs.check_rig(rig)  # valid by the file rules too


def test_standard_rig_refuses_other_counts():
    with pytest.raises(rigs.RigError, match=r"rig h36m: cameras must be one of \(1, 2, 4, 8\), got 3"):
        rigs.standard_rig(3)


def test_packaged_h36m_s1_reproduces_the_four_camera_rig_bit_for_bit():
    packaged = rigs.resolve_rig("h36m-s1", 0)
    assert packaged.name == "h36m-s1"
    _same_cameras(packaged, rigs.standard_rig(4))  # float64, so stores built from either are identical
    assert rigs.rig_digest(packaged) == rigs.rig_digest(rigs.standard_rig(4))


def test_packaged_rigs_are_listed_and_round_trip(tmp_path):
    known = rigs.packaged_rigs()
    assert {"h36m-s1", "elevated-ring", "close-wide"} <= set(known)
    for name, path in known.items():
        rig = rigs.load_rig(path)
        assert rig.name == name
        rigs.save_rig(rig, tmp_path / f"{name}.yaml")
        again = rigs.load_rig(tmp_path / f"{name}.yaml")
        _same_cameras(again, rig, np.float32)
        _same_cameras(again, rig)  # in fact exact: floats are written at full precision
        assert again.min_distance_m == rig.min_distance_m and again.name == rig.name
        assert rigs.rig_digest(again) == rigs.rig_digest(rig)


def test_saved_standard_rig_reloads_bit_for_bit_in_float32(tmp_path):
    rigs.save_rig(rigs.standard_rig(4), tmp_path / "s.yaml")
    _same_cameras(rigs.load_rig(tmp_path / "s.yaml"), rigs.standard_rig(4), np.float32)
    text = rigs.rig_yaml(rigs.standard_rig(8))
    assert text.startswith("# MPT camera rig") and "'60457274'" in text  # numeric names stay strings


def _elevation_deg(cam: cm.Camera, subject: np.ndarray) -> float:
    d = cam.center - subject
    return float(np.degrees(np.arctan2(d[2], np.hypot(d[0], d[1]))))


def test_held_out_rigs_are_what_they_claim_and_see_a_standing_body():
    elevated = rigs.resolve_rig("elevated-ring", 0)
    close = rigs.resolve_rig("close-wide", 0)
    h36m = rigs.standard_rig(8)
    elev = [_elevation_deg(c, elevated.subject_position) for c in elevated.cameras]
    assert len(elev) == 6 and min(elev) >= 30 - 1e-6 and max(elev) <= 60 + 1e-6
    assert max(_elevation_deg(c, h36m.subject_position) for c in h36m.cameras) < 15
    dist = [np.linalg.norm(c.center - close.subject_position) for c in close.cameras]
    assert len(dist) == 6 and min(dist) >= 2.0 - 1e-3 and max(dist) <= 2.5 + 1e-3
    # wide angle: horizontal field of view over 80 degrees, Human3.6M's is under 50
    fov = [np.degrees(2 * np.arctan(c.image_size[0] / 2 / c.K[0, 0])) for c in close.cameras]
    assert min(fov) > 80 and max(np.degrees(2 * np.arctan(c.image_size[0] / 2 / c.K[0, 0])) for c in h36m.cameras) < 50
    # a standing person (feet on the floor, 1.8 m tall, 0.7 m wide) is in front of and inside every image
    rng = np.random.default_rng(0)
    for rig in (elevated, close):
        body = rig.subject_position + rng.uniform([-0.35, -0.35, -0.9], [0.35, 0.35, 0.9], (500, 3))
        for cam in rig.cameras:
            uv, depth = cm.project(body, cam)
            assert (depth > 0).all()
            assert (uv >= 0).all() and (uv < np.array(cam.image_size)).all(), (rig.name, cam.name)
            # the look-at form puts the subject position on the principal point
            np.testing.assert_allclose(cm.project(rig.subject_position[None], cam)[0][0], cam.K[:2, 2], atol=1e-3)


# --------------------------------------------------------------------------------------------
# The sphere rig for hands


@pytest.mark.parametrize("n", [1, 2, 3, 16, 64])
def test_sphere_rig_cameras_look_at_the_origin_from_the_sphere(n):
    rig = rigs.sphere_rig(n)
    assert len(rig.cameras) == n and rig.min_distance_m == pytest.approx(0.1)
    np.testing.assert_array_equal(rig.subject_position, np.zeros(3))
    centres = np.stack([c.center for c in rig.cameras])
    np.testing.assert_allclose(np.linalg.norm(centres, axis=1), rigs.HAND_DISTANCE_M, rtol=1e-12)
    if n > 1:
        gaps = np.linalg.norm(centres[:, None] - centres[None], axis=-1) + np.eye(n) * 9
        assert gaps.min() > 0.05  # distinct (64 cameras on a 0.6 m sphere are about 0.13 m apart)
    for cam in rig.cameras:
        np.testing.assert_allclose(cam.R @ cam.R.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(cam.R) == pytest.approx(1.0)
        assert cam.image_size == (224, 224) and cam.K[0, 0] == rigs.HAND_FOCAL_PX
        uv, depth = cm.project(np.zeros((1, 3)), cam)
        np.testing.assert_allclose(uv[0], [112.0, 112.0], atol=1e-3)  # the origin on the principal point
        assert depth[0] == pytest.approx(rigs.HAND_DISTANCE_M)
        # a hand-sized ball (0.2 m across) around the origin is in front and inside the 224 px image
        ball = np.random.default_rng(1).normal(size=(200, 3))
        ball = 0.1 * ball / np.linalg.norm(ball, axis=1, keepdims=True)
        buv, bdepth = cm.project(ball, cam)
        assert (bdepth > 0.4).all() and (buv >= 0).all() and (buv < 224).all()
        # up is never (nearly) parallel to the viewing direction: the image's up (-camera y) has a
        # component of at least sin(30 degrees) on the chosen world up axis
        assert max(abs(cam.R[1, 2]), abs(cam.R[1, 1])) >= 0.5 - 1e-9
    rigs.check_rig(rig)
    # the cameras cover both hemispheres for n > 1
    if n > 1:
        assert centres[:, 2].max() > 0 and centres[:, 2].min() < 0


def test_sphere_rig_refuses_impossible_counts():
    for n in (0, 65):
        with pytest.raises(rigs.RigError, match=r"rig sphere: cameras must be in 1\.\.64"):
            rigs.sphere_rig(n)


# --------------------------------------------------------------------------------------------
# Rig files: the two forms of intrinsics and extrinsics, and every refusal


def test_look_at_and_focal_forms_equal_the_explicit_form(tmp_path):
    rig = rigs.load_rig(_write(tmp_path / "ring.yaml", _ring()))
    for cam in rig.cameras:
        forward = np.array([0.0, 0.0, 0.9]) - cam.center
        np.testing.assert_allclose(cam.R[2], forward / np.linalg.norm(forward), atol=1e-12)
        assert cam.R[1, 2] < 0  # camera y (down) points down in the world
    c0 = rig.cameras[0]
    explicit = {"name": "x", "image_size": [1000, 1000], "focal": [1000.0, 1000.0], "principal_point": [500.0, 500.0],
                "R": c0.R.tolist(), "t": c0.t.tolist()}
    again = rigs.load_rig(_write(tmp_path / "explicit.yaml", {"name": "e", "subject_position": [0, 0, 0.9],
                                                              "min_distance_m": 1.0, "cameras": [explicit]}))
    np.testing.assert_array_equal(again.cameras[0].K, c0.K)
    np.testing.assert_array_equal(again.cameras[0].R, c0.R)
    assert again.min_distance_m == 1.0
    rolled = _ring(1)
    rolled["cameras"][0]["roll_deg"] = 90.0
    rolled["cameras"][0]["up"] = [0.0, 0.0, 2.0]
    r90 = rigs.load_rig(_write(tmp_path / "rolled.yaml", rolled)).cameras[0]
    np.testing.assert_allclose(r90.R[0], rig.cameras[0].R[1], atol=1e-12)  # x takes y's place
    np.testing.assert_allclose(r90.R[2], rig.cameras[0].R[2], atol=1e-12)  # the optical axis stays


def _set(i, drop=(), **values):
    """A change to camera i of `_ring()`: remove the keys `drop`, then set `values`."""
    def change(d):
        for k in drop:
            d["cameras"][i].pop(k)
        d["cameras"][i].update(values)
    return change


LOOK = ("centre", "look_at")


def _bad(data_change):
    data = _ring()
    data_change(data)
    return data


BAD_RIGS = [
    ("singular K", lambda d: d["cameras"][2].update(K=[[1000.0, 0.0, 500.0], [0.0, 0.0, 500.0], [0.0, 0.0, 1.0]]),
     "cameras[2].K: singular intrinsics (det 0)"),
    ("negative focal", lambda d: d["cameras"][1].update(K=[[-1000.0, 0.0, 500.0], [0.0, 1000.0, 500.0], [0.0, 0.0, 1.0]]),
     "cameras[1].K: focal lengths must be > 0"),
    ("K last row", lambda d: d["cameras"][0].update(K=[[1000.0, 0.0, 500.0], [0.0, 1000.0, 500.0], [0.0, 0.1, 1.0]]),
     "cameras[0].K: must be [[fx, s, cx], [0, fy, cy], [0, 0, 1]]"),
    ("focal zero", _set(0, ("K",), focal=[0.0, 900.0], principal_point=[500.0, 500.0]),
     "cameras[0].focal: focal lengths must be > 0"),
    ("K wrong shape", lambda d: d["cameras"][1].update(K=[[1000.0, 0.0], [0.0, 1000.0]]), "cameras[1].K: need shape [3, 3]"),
    ("t wrong shape", _set(0, LOOK, R=np.eye(3).tolist(), t=[0.0, 4.0]), "cameras[0].t: need shape [3]"),
    ("R scaled", _set(0, LOOK, R=(1.01 * np.eye(3)).tolist(), t=[0.0, 0.0, 4.0]), "cameras[0].R: not a rotation"),
    ("R reflection", _set(0, LOOK, R=np.diag([1.0, 1.0, -1.0]).tolist(), t=[0.0, 0.0, 4.0]),
     "cameras[0].R: not a rotation"),
    ("not finite", lambda d: d["cameras"][2].update(centre=[float("nan"), 1.0, 1.0]), "cameras[2].centre: numbers must be finite"),
    ("size zero", lambda d: d["cameras"][0].update(image_size=[0, 1000]), "cameras[0].image_size: width and height must be"),
    ("inside the subject", lambda d: d["cameras"][1].update(centre=[0.2, 0.1, 1.0]), "cameras[1]: the camera centre"),
    ("subject behind", _set(0, LOOK, R=np.eye(3).tolist(), t=[0.0, 0.0, -4.0]),
     "cameras[0]: the subject position is behind the camera"),
    ("look_at at the centre", lambda d: d["cameras"][0].update(look_at=d["cameras"][0]["centre"]),
     "cameras[0].look_at: the camera centre and the look-at point coincide"),
    ("missing key", lambda d: d.pop("subject_position"), "missing key 'subject_position'"),
    ("missing extrinsics", _set(2, LOOK), "cameras[2]: missing extrinsics"),
    ("missing intrinsics", lambda d: d["cameras"][2].pop("K"), "cameras[2]: missing intrinsics"),
    ("R without t", lambda d: d["cameras"][0].update(R=np.eye(3).tolist()), "cameras[0]: give R + t or centre + look_at"),
    ("unknown top key", lambda d: d.update(subject_positon=[0, 0, 0]), "unknown key 'subject_positon'"),
    ("unknown camera key", lambda d: d["cameras"][1].update(foccal=[1.0, 1.0]), "cameras[1]: unknown key 'foccal'; did you mean 'focal'?"),
    ("duplicate name", lambda d: d["cameras"][2].update(name="c0"), "cameras[2].name: 'c0' is used twice"),
    ("no cameras", lambda d: d.update(cameras=[]), "cameras: need a non-empty list"),
    ("subject position shape", lambda d: d.update(subject_position=[0, 0]), "subject_position: need shape [3]"),
]


@pytest.mark.parametrize("change,message", [b[1:] for b in BAD_RIGS], ids=[b[0] for b in BAD_RIGS])
def test_a_bad_rig_file_is_refused_naming_the_file_and_the_field(tmp_path, change, message):
    path = _write(tmp_path / "x.yaml", _bad(change))
    with pytest.raises(rigs.RigError) as err:
        rigs.load_rig(path)
    text = str(err.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text


def test_unreadable_rig_files_are_refused(tmp_path):
    with pytest.raises(rigs.RigError, match="not valid YAML at line"):
        rigs.load_rig(_write(tmp_path / "broken.yaml", "name: [unclosed\ncameras: 1\n"))
    with pytest.raises(rigs.RigError, match="top level must be a mapping"):
        rigs.load_rig(_write(tmp_path / "list.yaml", "- 1\n- 2\n"))
    with pytest.raises(rigs.RigError, match="rig file not found"):
        rigs.load_rig(tmp_path / "absent.yaml")


def test_min_distance_lets_a_hand_rig_come_close(tmp_path):
    close = _ring(3, distance=0.3, height=1.0)
    with pytest.raises(rigs.RigError, match=r"inside the subject \(min_distance_m 0.5\)"):
        rigs.load_rig(_write(tmp_path / "close.yaml", close))
    close["min_distance_m"] = 0.1
    assert len(rigs.load_rig(_write(tmp_path / "close.yaml", close)).cameras) == 3


# --------------------------------------------------------------------------------------------
# Names, digests and recipes


def test_resolve_rig_names_and_paths(tmp_path, monkeypatch):
    _write(tmp_path / "mine.yaml", _ring())
    assert len(rigs.resolve_rig("h36m", 8).cameras) == 8
    assert len(rigs.resolve_rig("sphere", 16).cameras) == 16
    assert rigs.resolve_rig("elevated-ring", 0).name == "elevated-ring"
    assert len(rigs.resolve_rig("mine.yaml", 0, base_dir=tmp_path).cameras) == 3
    monkeypatch.chdir(tmp_path)
    assert len(rigs.resolve_rig("mine.yaml", 0).cameras) == 3  # no base_dir: the current directory
    with pytest.raises(rigs.RigError, match="no such rig file, and not a rig name.*close-wide"):
        rigs.resolve_rig("nonesuch", 4)
    with pytest.raises(rigs.RigError, match="rig file not found"):
        rigs.resolve_rig("other/mine.yaml", 4)


def test_rig_digest_follows_the_content_not_the_name():
    rig = rigs.standard_rig(4)
    renamed = dataclasses.replace(rig, name="other", min_distance_m=1.0)
    assert rigs.rig_digest(renamed) == rigs.rig_digest(rig)
    cams = list(rig.cameras)
    cams[2] = dataclasses.replace(cams[2], t=cams[2].t + [0.0, 0.0, 1e-9])
    assert rigs.rig_digest(dataclasses.replace(rig, cameras=tuple(cams))) != rigs.rig_digest(rig)
    moved = dataclasses.replace(rig, subject_position=rig.subject_position + [0.0, 0.0, 0.01])
    assert rigs.rig_digest(moved) != rigs.rig_digest(rig)
    assert rigs.rig_digest(rigs.standard_rig(8)) != rigs.rig_digest(rig)


def test_recipe_rig_key_counts_paths_and_hash(tmp_path, monkeypatch):
    folder = tmp_path / "recipes"
    folder.mkdir()
    _write(folder / "ring.yaml", _ring(3))
    (folder / "r.yaml").write_text("rig: ring.yaml\nsampling:\n  target_fps: 10\n")
    cfg = load_recipe(folder / "r.yaml")
    assert cfg.rig == str(folder / "ring.yaml") and cfg.cameras == 3  # relative to the recipe; count from the file
    (folder / "r4.yaml").write_text("rig: ring.yaml\ncameras: 4\nsampling:\n  target_fps: 10\n")
    with pytest.raises(RecipeError, match=r"cameras 4 does not match rig .*ring.yaml \(3 cameras\)"):
        load_recipe(folder / "r4.yaml").camera_rig()
    assert load_recipe(folder / "r4.yaml", cameras=3).cameras == 3
    # --rig (an override) is relative to the current directory and replaces the recipe's camera count
    monkeypatch.chdir(folder)
    over = load_recipe(REPO / "pipelines" / "demo.yaml", rig="ring.yaml")
    assert over.rig == str(folder / "ring.yaml") and over.cameras == 3
    assert load_recipe(REPO / "pipelines" / "demo.yaml", rig="elevated-ring").cameras == 6
    (folder / "r8.yaml").write_text("cameras: 8\nsampling:\n  target_fps: 10\n")
    assert load_recipe(folder / "r8.yaml", rig="h36m").cameras == 8  # a built-in rig keeps the recipe's count
    assert load_recipe(folder / "r8.yaml", rig="sphere").camera_rig().name == "sphere-8"
    assert load_recipe(REPO / "pipelines" / "demo.yaml", rig="sphere", cameras=16).camera_rig().name == "sphere-16"
    for rig, n, message in (("h36m", 3, r"one of \(1, 2, 4, 8\) for rig h36m"), ("sphere", 65, r"in 1\.\.64 for rig sphere")):
        with pytest.raises(RecipeError, match=message):
            load_recipe(None, rig=rig, cameras=n).camera_rig()
    # The hash: the rig's content, not its path or name
    base = dict(amass_root="a", body_model_dir="b", target_fps=10.0)
    h = {spec: recipe_hash(load_recipe(None, rig=spec, **base), {}) for spec in ("h36m", "h36m-s1", "elevated-ring")}
    assert h["h36m"] == h["h36m-s1"] != h["elevated-ring"]
    assert recipe_hash(load_recipe(None, **base), {}) == h["h36m"]  # no rig key: as before rigs existed
    (tmp_path / "copy").mkdir()
    _write(tmp_path / "copy" / "elsewhere.yaml", rigs.rig_yaml(rigs.resolve_rig("elevated-ring", 0)))
    assert recipe_hash(load_recipe(None, rig=str(tmp_path / "copy" / "elsewhere.yaml"), **base), {}) == h["elevated-ring"]


def test_cli_refuses_a_bad_rig_in_one_line(tmp_path):
    from click.testing import CliRunner

    from mpt_data.cli import main

    bad = _write(tmp_path / "bad.yaml", _bad(BAD_RIGS[0][1]))
    result = CliRunner().invoke(main, ["build", "--rig", str(bad), "--out", str(tmp_path / "s")])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert lines == [f"Error: {bad}: cameras[2].K: singular intrinsics (det 0)"]


# --------------------------------------------------------------------------------------------
# Stores built through a rig


def _heads_and_cameras(group):
    """Per mesh: coco17 face points in world metres; per camera: centre; and the stored visibility."""
    coco = np.asarray(group[f"{schema.JOINTS_GROUP}/coco17"][:], np.float64)
    pos = np.asarray(group[schema.CAMERAS].attrs[schema.ATTR_SUBJECT_POSITION], np.float64)
    R = np.asarray(group[schema.CAMERA_R][:], np.float64)
    t = np.asarray(group[schema.CAMERA_T][:], np.float64)
    centres = -np.einsum("cji,cj->ci", R, t)
    return coco[:, :5] + pos, centres, np.asarray(group[schema.VISIBLE][:])


def test_rear_views_of_a_built_store_hide_the_face(reference_store):
    group = zarr.open_group(str(reference_store.path), mode="r")
    face, centres, vis = _heads_and_cameras(group)
    head = (face[:, 3] + face[:, 4]) / 2
    forward = face[:, 0] - head
    forward /= np.linalg.norm(forward, axis=-1, keepdims=True)
    to_cam = centres[None] - head[:, None]
    to_cam /= np.linalg.norm(to_cam, axis=-1, keepdims=True)
    cos = np.einsum("bk,bck->bc", forward, to_cam)  # (meshes, cameras): 1 = the face looks at the camera
    rear, front = cos < -0.7, cos > 0.7
    assert rear.sum() > 20 and front.sum() > 20
    assert not vis[..., :3][rear].any()  # nose and eyes never visible from behind
    assert vis[..., 0][front].all() and vis[..., 1:3][front].all()  # and always from the front (all in the crop)


def test_a_store_built_through_a_rig_file_holds_its_cameras_and_views(build_inputs, tmp_path):
    from store_builds import small_config

    from mpt_data.build import build_store

    data = _ring(3)
    data["subject_position"] = [0.5, -0.2, 0.9]
    for cam in data["cameras"]:
        cam["look_at"] = [0.5, -0.2, 0.9]
        cam["centre"][0] += 0.5
        cam["centre"][1] -= 0.2
    path = _write(tmp_path / "three.yaml", data)
    rig = rigs.load_rig(path)
    cfg = small_config(build_inputs, tmp_path / "store", cameras=None, rig=str(path), target_fps=5.0)
    assert cfg.cameras == 3
    group = zarr.open_group(str(build_store(cfg)), mode="r")
    assert group.attrs[schema.ATTR_COUNTS]["cameras"] == 3
    assert group[schema.CAMERAS].attrs[schema.ATTR_CAMERA_NAMES] == ["c0", "c1", "c2"]
    np.testing.assert_array_equal(group[schema.CAMERAS].attrs[schema.ATTR_SUBJECT_POSITION], [0.5, -0.2, 0.9])
    np.testing.assert_array_equal(group[schema.CAMERA_K][:], np.stack([c.K for c in rig.cameras]).astype(np.float32))
    np.testing.assert_array_equal(group[schema.CAMERA_R][:], np.stack([c.R for c in rig.cameras]).astype(np.float32))
    # the stored views are the rig's views of the stored meshes, with the face rule
    coco = np.asarray(group[f"{schema.JOINTS_GROUP}/coco17"][:])
    verts = np.asarray(group[schema.VERTICES][:8]).astype(np.float32) * np.float32(schema.VERTEX_SCALE_M)
    views = cm.project_views(coco[:8], verts, rig.cameras, rig.subject_position, face_rows=(0, 1, 2, 3, 4))
    np.testing.assert_allclose(group[schema.JOINTS2D][:8], views.joints2d, atol=0.05)  # vertices are quantised
    face, centres, vis = _heads_and_cameras(group)
    np.testing.assert_array_equal(vis[..., :5] & ~cm.face_facing(face[:, None], centres[None]), False)
    assert (~cm.face_facing(face[:, None], centres[None])).any()  # some face keypoint is turned away
    assert group.attrs[schema.ATTR_RECIPE]["rig"] == str(path)


def test_the_readme_example_rig_loads_and_faces_the_subject(tmp_path):
    text = (REPO / "README.md").read_text()
    start = text.index("```yaml", text.index("### Camera rigs")) + len("```yaml")
    rig = rigs.load_rig(_write(tmp_path / "example.yaml", text[start: text.index("```", start)]))
    assert [c.name for c in rig.cameras] == ["side", "high"]
    for cam in rig.cameras:  # both put the subject position on their principal point
        np.testing.assert_allclose(cm.project(rig.subject_position[None], cam)[0][0], cam.K[:2, 2], atol=1e-6)
