"""The joint conventions are internally consistent (trees, flips, index maps)."""

from __future__ import annotations

import pytest

from mpt_data import conventions as cv


@pytest.mark.parametrize(
    "names,parents",
    [(cv.SMPL_JOINTS, cv.SMPL_PARENTS), (cv.SMPLH_JOINTS, cv.SMPLH_PARENTS), (cv.H36M_JOINTS, cv.H36M_PARENTS)],
)
def test_trees_are_rooted_and_topologically_ordered(names, parents):
    assert len(names) == len(parents)
    assert parents[0] == -1
    assert all(0 <= p < i for i, p in enumerate(parents) if i > 0)


def test_smplh_layout():
    assert len(cv.SMPLH_JOINTS) == 52 == cv.AMASS_SMPLH_POSE_DIM // 3
    assert len(cv.SMPLX_TO_SMPLH_POSE_COLUMNS) == cv.AMASS_SMPLH_POSE_DIM
    # finger bases hang off the wrists
    assert cv.SMPLH_PARENTS[cv.SMPLH_JOINTS.index("left_index1")] == cv.SMPLH_JOINTS.index("left_wrist")
    assert cv.SMPLH_PARENTS[cv.SMPLH_JOINTS.index("right_thumb3")] == cv.SMPLH_JOINTS.index("right_thumb2")
    assert [cv.SMPLH_JOINTS[i] for i in cv.SMPLH_TO_SMPL24[-2:]] == ["left_middle1", "right_middle1"]


@pytest.mark.parametrize("joint_set", sorted(cv.JOINT_SETS))
def test_flip_pairs_swap_left_and_right_names(joint_set):
    names = cv.JOINT_SETS[joint_set]
    perm = cv.flip_permutation(joint_set)
    assert sorted(perm) == list(range(len(names)))
    for i, j in enumerate(perm):
        a, b = names[i], names[j]
        if a.startswith("left_"):
            assert b == "right_" + a[len("left_"):]
        elif a.startswith("right_"):
            assert b == "left_" + a[len("right_"):]
        else:
            assert i == j


def test_h36m_eval_joints_drop_pelvis_torso_nose():
    kept = {cv.H36M_JOINTS[i] for i in cv.H36M_TO_EVAL14}
    assert len(cv.H36M_TO_EVAL14) == 14 == len(kept)
    assert kept.isdisjoint({"pelvis", "torso", "nose"})
