"""predict: the y-up mesh.obj beside the camera-frame one, and the overlay's crop box and 2D keypoints."""

from __future__ import annotations

import numpy as np
import torch

from mpt_data import conventions, schema
from mpt_data.images import image_to_crop
from mpt_data.raster import SIDE_COLOURS, joint_sides
from mpt_train import predict as pr


def _camera_frame_mesh(store_path, index: int, camera: int):
    """(vertices (V, 3), coco17 joints (17, 3), faces) of a stored mesh, root-centred, in a camera's frame."""
    import zarr

    from mpt_data.preview import read_mesh_views

    views = read_mesh_views(store_path, index)  # root-centred metres, world axes (z up)
    joints = np.asarray(zarr.open_group(str(store_path), mode="r")[f"{schema.JOINTS_GROUP}/coco17"][index], np.float64)
    R = views.R[camera].astype(np.float64)
    return views.vertices.astype(np.float64) @ R.T, joints @ R.T, views.faces


def test_obj_is_upright_y_up_and_the_camera_file_is_the_same_mesh_turned(reference_store, tmp_path):
    verts_cam, joints_cam, faces = _camera_frame_mesh(reference_store.path, 5, 0)
    assert joints_cam[0, 1] < joints_cam[15, 1]  # camera frame: y down, the nose has the smaller y
    obj_path, cam_path = pr.write_meshes(tmp_path, verts_cam, faces)
    assert obj_path.name == "mesh.obj" and cam_path.name == "mesh_camera.obj"
    v_obj, f_obj = pr.read_obj(obj_path)
    v_cam, f_cam = pr.read_obj(cam_path)
    np.testing.assert_allclose(v_cam, verts_cam, atol=1e-6)
    np.testing.assert_array_equal(f_obj, faces)
    np.testing.assert_array_equal(f_cam, faces)
    # the stated turn: 180 degrees about x, a proper rotation (faces keep their winding)
    np.testing.assert_allclose(v_obj, v_cam * [1.0, -1.0, -1.0], atol=1e-6)
    assert np.linalg.det(pr.OBJ_FROM_CAMERA) == 1.0
    # upright: the highest vertex is on the head (within 0.2 m of a face keypoint: nose, eyes, ears), the
    # lowest by the ankles, over a metre below
    joints_obj = joints_cam @ pr.OBJ_FROM_CAMERA.T
    top, bottom = v_obj[v_obj[:, 1].argmax()], v_obj[v_obj[:, 1].argmin()]
    assert np.linalg.norm(joints_obj[:5] - top, axis=1).min() < 0.2
    assert np.linalg.norm(joints_obj[15:17] - bottom, axis=1).min() < 0.2
    assert top[1] - bottom[1] > 1.0
    # camera 0 sees the subject's front: in the OBJ the face points towards the viewer (+z), nose before the ears
    assert joints_obj[0, 2] > joints_obj[3:5, 2].mean()
    head = obj_path.read_text().splitlines()[0]
    assert "y up" in head and "z towards the camera" in head


class _PeaksModel(torch.nn.Module):
    """A stand-in for BackboneMPT whose heatmaps peak at given crop pixels (the real forward is tested in
    test_finetune); the mesh is a small triangle fan in front of the camera."""

    def __init__(self, peaks: np.ndarray, size: int = 224):
        super().__init__()
        self.peaks = peaks
        self.size = size
        self.regressor = torch.nn.Module()
        self.regressor.faces = torch.tensor([[0, 1, 2], [0, 2, 3]])

    def forward(self, x):
        maps = torch.zeros(1, len(self.peaks), self.size, self.size)
        for k, (c, r) in enumerate(self.peaks):
            maps[0, k, r, c] = 1.0
        verts = torch.tensor([[[-0.2, -0.5, 0.0], [0.2, -0.5, 0.0], [0.2, 0.5, 0.0], [-0.2, 0.5, 0.0]]])
        return {"vertices": verts, "joints": torch.zeros(1, 17, 3), "camera": torch.tensor([[0.8, 0.0, 0.0]]),
                "maps": maps}


def test_keypoints_are_the_heatmap_peaks_in_image_pixels_and_drawn_with_the_box(tmp_path):
    rng = np.random.default_rng(3)
    peaks = np.stack([rng.integers(40, 184, 17), rng.integers(40, 184, 17)], 1)  # (col, row) crop pixels
    image = np.full((300, 400, 3), 90, np.uint8)
    bbox = (150.0, 60.0, 80.0, 160.0)
    res = pr.predict(_PeaksModel(peaks), image, bbox)
    box = res["box"]
    assert np.allclose(box, (190 - 96, 140 - 96, 192))  # side 1.2 x 160 around the box centre
    # back through the image shards' rule (image -> crop) the keypoints are the peaks' pixels
    np.testing.assert_allclose(image_to_crop(res["keypoints"], box, 224), peaks, atol=1e-4)
    np.testing.assert_allclose(res["keypoints"], peaks * 192 / 224 + np.array(box[:2]), atol=1e-9)

    pic = pr.overlay(image, res)
    # enlarged 2x (a whole factor up to OVERLAY_MIN_PX = 448), a caption strip above each half
    assert pic.shape == (pr.CAPTION_PX + 600, 2 * 800, 3)
    seen, mesh = pic[pr.CAPTION_PX :, :800], pic[pr.CAPTION_PX :, 800:]

    def big(u):  # image pixel -> enlarged pixel, centres at integers
        return (np.asarray(u, np.float64) + 0.5) * 2 - 0.5

    # the crop box's edges through crop pixels 0 and 223 (image x0 and x0 + 223 * 192 / 224), with a dark rim
    x0, y0 = round(big(box[0])), round(big(box[1]))
    x1, y1 = round(big(box[0] + 223 * 192 / 224)), round(big(box[1] + 223 * 192 / 224))
    for x, y in ((x0, 280), (x1, 280), (280, y1), (280, y0)):
        assert tuple(seen[y, x]) == pr.BOX_COLOUR, (x, y, seen[y, x])
    left = seen[280, x0 - 8 : x0]  # outside the line: background, then the dark rim
    assert tuple(left[0]) == (90, 90, 90) and (left == 0).all(-1).any()
    assert tuple(seen[280, x1 + 8]) == (90, 90, 90)
    # each keypoint is a dot in its side's colour (where dots of other joints do not cover it)
    sides = joint_sides(conventions.COCO_JOINTS)
    kp = np.round(big(res["keypoints"])).astype(int)
    checked = 0
    for k, (x, y) in enumerate(kp):
        others = np.delete(kp, k, axis=0)
        if np.abs(others - (x, y)).max(1).min() > 16:
            assert tuple(seen[y, x]) == SIDE_COLOURS[sides[k]], (k, seen[y, x])
            checked += 1
    assert checked >= 8
    # the right half shows the mesh inside the same box
    assert (np.abs(mesh.astype(int) - 90).sum(-1) > 30).sum() > 2000
    assert tuple(mesh[280, x0]) == pr.BOX_COLOUR
    caption = pic[: pr.CAPTION_PX]
    assert (caption > 200).all(-1).sum() > 100  # white caption text on each half
    assert (caption[:, 800:] > 200).all(-1).sum() > 50
