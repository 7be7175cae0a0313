"""Breaches of drilled channels against analytic bone: a box vertebra with 1 mm voxels whose
walls lie exactly at known planes, so every breach depth, grade and direction is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sim.anatomy.patient import Patient, VertebraLandmarks
from sim.anatomy.tissues import TISSUE_ID
from sim.errors import InputError
from sim.surgery.breach import DIRECTIONS, GRADES, ChannelBreach, grade
from sim.surgery.distance import VertebraDistance

MM = 1e-3
L3 = 2  # index of vertebrae_L3 in LUMBAR
RADIUS_M = 3 * MM
# Voxel centres at half millimetres, so a mask of the centres inside |x| < 10 mm has its surface at
# exactly 10 mm (the field's zero lies halfway between inside and outside centres).
HALF = np.arange(-39.5, 40.0, 1.0)  # 80 centres, mm


def box_patient(canal: bool) -> Patient:
    """A box of bone labelled vertebrae_L3: |x| < 10 mm (left-right), |y| < 20 mm (posterior -y,
    anterior +y), |z| < 12 mm; with `canal`, a 'spinal canal' hole |x| < 4 mm, y < -5 mm cut into
    its posterior half. Landmarks: centre at the origin, axes superior +z, posterior -y, right +x."""
    x, y, z = np.meshgrid(HALF, HALF, HALF, indexing="ij")
    bone = (np.abs(x) < 10) & (np.abs(y) < 20) & (np.abs(z) < 12)
    if canal:
        bone &= ~((np.abs(x) < 4) & (y < -5))
    structures = bone.astype(np.uint8)  # id 1: vertebrae_L3
    affine = np.diag([MM, MM, MM, 1.0])
    affine[:3, 3] = -39.5 * MM
    patient = Patient(
        name="box",
        tissue=np.where(bone, TISSUE_ID["bone"], TISSUE_ID["muscle"]).astype(np.uint8),
        structures=structures,
        structure_names={"vertebrae_L3": 1},
        affine=affine,
    )
    axes = np.array([[0.0, 0.0, 1.0], [0.0, -1.0, 0.0], [1.0, 0.0, 0.0]])
    patient.landmarks["vertebrae_L3"] = VertebraLandmarks("vertebrae_L3", np.zeros(3), axes, {})
    return patient


def channels(x_mm: list[float], depth_mm: float = 45.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Channels from y = -30 mm (behind the bone) straight anterior (+y) at lateral offsets x_mm."""
    n = len(x_mm)
    entry = torch.tensor([[x * MM, -30 * MM, 0.0] for x in x_mm])
    axis = torch.tensor([[0.0, 1.0, 0.0]]).expand(n, 3)
    return entry, axis, torch.full((n,), depth_mm * MM)


def test_the_distance_field_is_exact_at_planar_walls():
    field = VertebraDistance([box_patient(canal=False)])
    # Away from the box's mid-plane (where trilinear interpolation cuts the distance ridge by half a voxel).
    points = torch.tensor([[[x * MM, 0.0, 0.0] for x in (1.0, 7.0, 8.0, 9.5, 10.0, 11.0, 13.0)]])
    d = field.distance(points, torch.tensor([0]), torch.tensor([L3]))[0] / MM
    torch.testing.assert_close(d, torch.tensor([-9.0, -3.0, -2.0, -0.5, 0.0, 1.0, 3.0]), atol=1e-4, rtol=0)
    _, normals = field.distance_and_normal(points[:, 2:3], torch.tensor([0]), torch.tensor([L3]))
    torch.testing.assert_close(normals[0, 0], torch.tensor([1.0, 0.0, 0.0]), atol=1e-4, rtol=0)


def test_breach_depth_grade_and_direction_of_straight_channels():
    breach = ChannelBreach([box_patient(canal=False)])
    # The drill reaches |x| + 3 mm: 3, 9, 11, 12, 14 against the wall at 10 (the last one's centre line
    # runs 1 mm outside the wall it cuts into).
    x_mm = [0.0, 6.0, 8.0, -9.0, 11.0]
    entry, axis, depth = channels(x_mm)
    b = breach(entry, axis, depth, RADIUS_M, torch.zeros(5, dtype=torch.long), torch.full((5,), L3))
    torch.testing.assert_close(b.depth_m / MM, torch.tensor([0.0, 0.0, 1.0, 2.0, 4.0]), atol=2e-3, rtol=0)
    assert [GRADES[g] for g in b.grade.tolist()] == ["A", "A", "B", "C", "D"]
    assert [DIRECTIONS[d] for d in b.direction[2:].tolist()] == ["lateral"] * 3  # away from the midline
    torch.testing.assert_close(b.weighted_mm, b.depth_m / MM, atol=2e-3, rtol=0)  # lateral weight 1


def test_the_whole_shaft_counts_not_the_tip_alone():
    """Beside the canal the shaft breaches medially while the tip, anterior of the canal, is in solid
    bone: the breach is found along the shaft, weighted twice (medial)."""
    breach = ChannelBreach([box_patient(canal=True)])
    entry, axis, depth = channels([5.5, 8.0])
    b = breach(entry, axis, depth, RADIUS_M, torch.zeros(2, dtype=torch.long), torch.full((2,), L3))
    # x = 5.5: the canal wall at 4 mm is 1.5 mm inside the drill's reach (5.5 - 3 = 2.5 < 4).
    assert b.depth_m[0] / MM == pytest.approx(1.5, abs=0.01) and DIRECTIONS[int(b.direction[0])] == "medial"
    assert float(b.weighted_mm[0]) == pytest.approx(3.0, abs=0.02)
    tip = entry + axis * depth[:, None]
    tip_distance = breach.field.distance(tip[:1, None], torch.zeros(1, dtype=torch.long), torch.full((1,), L3))
    assert float(tip_distance) < -RADIUS_M  # the tip alone shows no breach
    # x = 8 mm: clear of the canal (8 - 3 = 5 > 4), 1 mm through the lateral wall.
    assert b.depth_m[1] / MM == pytest.approx(1.0, abs=0.01) and DIRECTIONS[int(b.direction[1])] == "lateral"


def test_the_entry_cortex_and_undrilled_length_are_no_breach():
    breach = ChannelBreach([box_patient(canal=False)])
    idx, level = torch.zeros(3, dtype=torch.long), torch.full((3,), L3)
    # Not yet at the bone (10 mm drilled from y = -30 ends at y = -20), just entered (13 mm: the
    # bit touched the bone at y = -23 and is fully in from y = -16), and a
    # channel whose planned length would leave the bone's far wall but is drilled to 40 mm only.
    entry, axis, _ = channels([8.0, 8.0, 0.0])
    b = breach(entry, axis, torch.tensor([10.0, 13.0, 40.0]) * MM, RADIUS_M, idx, level)
    assert b.depth_m.tolist() == [0.0, 0.0, 0.0]
    through = breach(entry[2:], axis[2:], torch.tensor([60.0 * MM]), RADIUS_M, idx[:1], level[:1])
    assert DIRECTIONS[int(through.direction[0])] == "anterior" and GRADES[int(through.grade[0])] == "E"


def test_grade_bins():
    mm = torch.tensor([0.0, 1e-3, 1.99, 2.0, 3.99, 4.0, 5.99, 6.0, 20.0])
    assert [GRADES[g] for g in grade(mm).tolist()] == ["A", "B", "B", "C", "C", "D", "D", "E", "E"]


def test_bad_input_names_the_input():
    patient = box_patient(canal=False)
    field = VertebraDistance([patient])
    with pytest.raises(InputError, match=r"patient, level \[\(0, 'vertebrae_L1'\)\]"):
        field.check_levels(torch.tensor([0]), torch.tensor([0]))
    with pytest.raises(InputError, match="weights"):
        ChannelBreach([patient], weights=(1.0, 1.0))
    with pytest.raises(InputError, match="margin_m"):
        VertebraDistance([patient], margin_m=0.0)
    unlabelled = box_patient(canal=False)
    unlabelled.structure_names = {"spinal_cord": 1}
    with pytest.raises(InputError, match="expected lumbar vertebra labels"):
        VertebraDistance([unlabelled])


def test_the_interpolant_gradient_matches_finite_differences():
    from sim.ultrasound.slicing import sample_trilinear, sample_trilinear_gradient

    gen = torch.Generator().manual_seed(0)
    flat = torch.rand(6 * 7 * 8, generator=gen)
    offsets, dims = torch.zeros(1, dtype=torch.long), torch.tensor([[6, 7, 8]])
    coords = 0.5 + torch.rand(1, 50, 3, generator=gen) * torch.tensor([4.0, 5.0, 6.0])
    value, grad = sample_trilinear_gradient(flat, offsets, dims, coords)
    torch.testing.assert_close(value, sample_trilinear(flat, offsets, dims, coords))
    h = 1e-3  # within a cell the interpolant is smooth: central differences are exact up to rounding
    eye = torch.eye(3) * h
    numeric = torch.stack(
        [
            (
                sample_trilinear(flat, offsets, dims, coords + eye[a])
                - sample_trilinear(flat, offsets, dims, coords - eye[a])
            )
            / (2 * h)
            for a in range(3)
        ],
        -1,
    )
    near_face = ((coords - coords.round()).abs() < 2 * h).any(-1, keepdim=True)  # a cell boundary within reach
    torch.testing.assert_close(torch.where(near_face, numeric, grad), numeric, atol=2e-3, rtol=0)
