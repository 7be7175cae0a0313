"""Derived data: skin surface, bone and body meshes, vertebra landmarks (phantom and real labels)."""

import json
from pathlib import Path

import numpy as np
import pytest

from sim.anatomy.derive import derive
from sim.anatomy.landmarks import LUMBAR, vertebra_landmarks
from sim.anatomy.meshes import bone_meshes
from sim.anatomy.patient import Patient
from sim.anatomy.phantom import make_phantom
from sim.anatomy.surface import skin_point, skin_surface
from sim.anatomy.tissue_map import TissueMap
from sim.anatomy.tissues import TISSUE_ID
from sim.errors import InputError

EXAMPLE = Path(__file__).resolve().parents[1] / "assets" / "patients" / "totalseg_example"


@pytest.fixture(scope="module")
def patient():
    return derive(make_phantom(seed=2, spacing_mm=2.0))


@pytest.fixture(scope="module")
def real_patient():
    """TotalSegmentator labels on the 3 mm example CT, built without the loaders."""
    import nibabel as nib

    seg_img = nib.load(EXAMPLE / "example_seg_fast_force_split.nii.gz")
    ct = np.asarray(nib.load(EXAMPLE / "example_ct.nii.gz").dataobj, np.float32)
    seg = np.asarray(seg_img.dataobj, np.uint8)
    names = {v: int(k) for k, v in json.loads((EXAMPLE / "class_map.json").read_text())["total"].items()}
    affine = seg_img.affine.copy()
    affine[:3] *= 1e-3  # mm -> m
    tmap = TissueMap.load()
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    tissue = tmap.tissue_volume(seg, names, tmap.body_mask_from_ct(ct, spacing), spacing, ct)
    return Patient("totalseg_example", tissue, seg, names, affine, ct)


def test_skin_normals_point_posterior(patient):
    skin = patient.skin
    a, b = skin.y.shape
    centre = skin.normal[a // 2 - 5 : a // 2 + 5, b // 4 : 3 * b // 4]
    assert np.all(centre[..., 1] < -0.9)
    assert np.allclose(np.linalg.norm(skin.normal[np.isfinite(skin.y)], axis=-1), 1.0)
    assert np.isnan(skin.y[0, 0])  # the grid corner misses the elliptical torso


def test_skin_point_lands_on_skin(patient):
    rng = np.random.default_rng(0)
    x = rng.uniform(-0.05, 0.05, (4, 5))
    z = rng.uniform(-0.08, 0.08, (4, 5))
    point, normal = skin_point(patient.skin, x, z)
    assert point.shape == normal.shape == (4, 5, 3)
    assert np.allclose(point[..., 0], x) and np.allclose(point[..., 2], z)
    inv = np.linalg.inv(patient.affine)
    spacing = patient.spacing[1]
    offsets = np.linspace(-1.5, 1.5, 7) * spacing  # within 1.5 voxels of the staircase surface
    for p in point.reshape(-1, 3):
        samples = [np.round(inv @ np.r_[p + [0, d, 0], 1]).astype(int)[:3] for d in offsets]
        column = [patient.tissue[tuple(ijk)] for ijk in samples]
        assert column[0] == TISSUE_ID["air"] and TISSUE_ID["skin"] in column and column[-1] != TISSUE_ID["air"]
    far, _ = skin_point(patient.skin, 10.0, 0.0)
    assert np.all(np.isnan(far))


def test_skin_surface_resampled(patient):
    coarse = skin_surface(patient, spacing_m=0.005)
    assert coarse.dx == coarse.dz == 0.005
    p_fine, _ = skin_point(patient.skin, 0.0, 0.0)
    p_coarse, _ = skin_point(coarse, 0.0, 0.0)
    assert abs(p_fine[1] - p_coarse[1]) < 1e-3
    with pytest.raises(InputError, match="spacing_m"):
        skin_surface(patient, spacing_m=0.0)


def test_meshes_closed_and_inside_volume(patient):
    lo = patient.affine[:3, 3] - patient.spacing
    hi = lo + patient.spacing * (np.array(patient.shape) + 1)
    assert set(patient.meshes) == {f"vertebrae_{v}" for v in ["T12", "L1", "L2", "L3", "L4", "L5", "S1"]} | {"body"}
    for name, mesh in patient.meshes.items():
        assert mesh.is_watertight and mesh.volume > 0, name
        assert np.all(mesh.vertices >= lo) and np.all(mesh.vertices <= hi), name
    l3 = patient.meshes["vertebrae_L3"]
    assert 2e-5 < l3.volume < 1.2e-4  # 20-120 mL
    with pytest.raises(InputError, match="step"):
        bone_meshes(patient, step=0)


def _check_landmarks(p: Patient, landmarks: dict) -> None:
    inv = np.linalg.inv(p.affine)
    for name, lm in landmarks.items():
        ijk = tuple(np.round(inv @ np.r_[lm.centre, 1]).astype(int)[:3])
        assert p.structures[ijk] == p.structure_names[name], name
        assert np.allclose(lm.axes @ lm.axes.T, np.eye(3), atol=1e-9) and np.linalg.det(lm.axes) > 0.999
        cc, posterior, right = lm.axes
        assert cc[2] > 0.8 and posterior[1] < -0.8 and right[0] > 0.95, name
        for plane in lm.planes.values():
            assert np.allclose(np.cross(plane.u, plane.normal), plane.v)  # right-handed probe frame
        tr = lm.planes["transverse"]
        assert np.allclose(tr.origin, lm.centre) and tr.v[1] > 0.8
        left, right_plane = lm.planes["parasagittal_left"], lm.planes["parasagittal_right"]
        offsets = [(pl.origin - lm.centre) @ right for pl in (left, right_plane)]
        assert -0.025 < offsets[0] < -0.004 and 0.004 < offsets[1] < 0.025, name
        assert 0.02 < (left.origin - lm.centre) @ posterior < 0.06, name
    z = [landmarks[n].centre[2] for n in LUMBAR if n in landmarks]
    assert np.all(np.diff(z) < 0)  # L1 above L2 above ... L5


def test_phantom_landmarks(patient):
    assert list(patient.landmarks) == list(LUMBAR)
    _check_landmarks(patient, patient.landmarks)
    l3 = patient.landmarks["vertebrae_L3"]
    assert np.linalg.norm(l3.centre) < 0.004  # the phantom puts the L3 body centre at the origin
    assert l3.planes["transverse"].normal[2] > np.cos(np.deg2rad(8))


def test_real_segmentation_landmarks(real_patient):
    landmarks = vertebra_landmarks(real_patient)
    assert list(landmarks) == list(LUMBAR)
    _check_landmarks(real_patient, landmarks)


def test_oblique_affine_rejected(patient):
    affine = patient.affine.copy()
    affine[0, 1] = 0.3 * affine[1, 1]
    oblique = Patient("oblique", patient.tissue, patient.structures, patient.structure_names, affine)
    with pytest.raises(InputError, match="affine"):
        skin_surface(oblique)
