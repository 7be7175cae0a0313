"""Soft-tissue structure: the fascia layer at the fat-muscle interface (tissue map, any patient),
the phantom's fibrous septa in fat and muscle, and the muscle striation they give the image."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from scipy import ndimage

from sim.anatomy.bank import PatientBank
from sim.anatomy.derive import derive
from sim.anatomy.phantom import PhantomParams, make_phantom
from sim.anatomy.surface import skin_point
from sim.anatomy.tissue_map import DEFAULT_TABLE, TissueMap
from sim.anatomy.tissues import TISSUE_ID
from sim.errors import InputError
from sim.transforms import pose_to_matrix
from sim.ultrasound import realism
from sim.ultrasound.placement import probe_pose_on_skin
from sim.ultrasound.probe import ProbeSpec
from sim.ultrasound.renderer import Renderer

FASCIA, FAT, MUSCLE = TISSUE_ID["fascia"], TISSUE_ID["fat"], TISSUE_ID["muscle"]


def test_fascia_layer_at_the_fat_muscle_interface():
    """Labelled fat over muscle at 0.5 mm voxels: the muscle's first 1 mm (2 voxels) under the fat
    becomes fascia, nothing else changes."""
    names = {"subcutaneous_fat": 1, "skeletal_muscle": 2}
    structures = np.zeros((12, 24, 12), np.uint8)
    structures[:, :8], structures[:, 8:] = 1, 2
    body = np.ones(structures.shape, bool)
    tmap = TissueMap.load()
    tissue = tmap.tissue_volume(structures, names, body, np.full(3, 0.0005))
    column = tissue[6, :, 6]
    skin = round(tmap.skin_thickness_mm / 0.5)  # the body's outer shell, here the first 4 voxels
    assert (column[skin:8] == FAT).all()
    assert (column[8:10] == FASCIA).all()
    assert (column[10:-skin] == MUSCLE).all()


@pytest.mark.parametrize(
    "layer, match",
    [
        ({"tissue": "fascia", "inner": "muscle", "outer": "fat", "thickness_mm": 0}, "thickness_mm"),
        ({"tissue": "fascia", "inner": "muscle", "outer": "fat"}, "thickness_mm"),
        ({"tissue": "gristle", "inner": "muscle", "outer": "fat", "thickness_mm": 1}, "gristle"),
        ({"tissue": "fascia", "outer": "fat", "thickness_mm": 1}, "inner"),
    ],
)
def test_bad_interface_rules(tmp_path: Path, layer, match):
    cfg = yaml.safe_load(DEFAULT_TABLE.read_text())
    cfg["interfaces"] = [layer]
    path = tmp_path / "tissue_map.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(InputError, match=rf"interfaces\[0\].*{match}|{match}.*interfaces"):
        TissueMap.load(path)


@pytest.fixture(scope="module")
def phantoms():
    """The same seed at 2 mm with the default septa and with none."""
    return make_phantom(3, 2.0), make_phantom(3, 2.0, PhantomParams(fat_septa=0.0, muscle_septa=0.0))


def test_septa_fractions_follow_params(phantoms):
    """The default phantom's fat and muscle hold their septa fractions (0.15, 0.08) as fascia; with
    no septa the only fascia is the interface layer, every voxel of it beside fat."""
    with_septa, without = phantoms
    assert np.array_equal(with_septa.structures, without.structures)  # septa are tissue, not structures
    for name, fraction in (("fat", PhantomParams().fat_septa), ("muscle", PhantomParams().muscle_septa)):
        sid = [with_septa.structure_names[n] for n in (["subcutaneous_fat"] if name == "fat" else ["autochthon_left"])]
        inside = np.isin(with_septa.structures, sid) & (without.tissue == TISSUE_ID[name])
        assert abs((with_septa.tissue[inside] == FASCIA).mean() - fraction) < 0.02, name
    lone = without.tissue == FASCIA
    assert lone.any()
    assert ndimage.binary_dilation(without.tissue == FAT, np.ones((3, 3, 3), bool))[lone].all()
    assert with_septa.ct[with_septa.tissue == FASCIA].mean() > with_septa.ct[with_septa.tissue == MUSCLE].mean()


def _correlation(indicator: np.ndarray, mask: np.ndarray, axis: int, lag: int) -> float:
    """Correlation of a 0/1 field with itself `lag` voxels along `axis`, over voxel pairs in `mask`."""
    a = np.moveaxis(indicator, axis, 0).astype(float)
    m = np.moveaxis(mask, axis, 0)
    pairs = m[:-lag] & m[lag:]
    x, y = a[:-lag][pairs], a[lag:][pairs]
    return float(np.corrcoef(x, y)[0, 1])


def test_muscle_septa_run_along_the_body_fat_septa_do_not(phantoms):
    """Perimysium runs with the fibres (z, along the spine): 4 mm along z a septum voxel is still
    septum far more often than 4 mm across (x or y); fat lobule walls have no direction."""
    with_septa, without = phantoms
    names = with_septa.structure_names
    septum = with_septa.tissue == FASCIA
    # inside the erector spinae, away from its fascia layer under the fat
    muscle = np.isin(with_septa.structures, [names["autochthon_left"], names["autochthon_right"]])
    muscle &= without.tissue == MUSCLE
    along, *across = (_correlation(septum, muscle, axis, 2) for axis in (2, 0, 1))
    assert along > 0.15 and along > 5 * max(across)
    fat = (with_septa.structures == names["subcutaneous_fat"]) & (without.tissue == FAT)
    z, x, y = (_correlation(septum, fat, axis, 1) for axis in (2, 0, 1))
    assert z > 0.15 and 0.8 < z / x < 1.25 and 0.8 < z / y < 1.25


def _muscle_rows(patient, pose: torch.Tensor, probe: ProbeSpec, margin: int = 5) -> tuple[int, int]:
    """Image rows of the longest muscle run along the central scan line, `margin` rows in from its ends."""
    m = pose_to_matrix(pose)[0].double().numpy()
    depth = np.arange(probe.image_height) * probe.pixel_spacing_m()[0]
    points = m[:, 3] + depth[:, None] * m[:, 2]
    vox = np.round((np.linalg.inv(patient.affine) @ np.c_[points, np.ones(len(points))].T)[:3].T).astype(int)
    muscle = np.r_[False, patient.tissue[tuple(vox.T)] == MUSCLE, False].astype(int)
    starts, ends = np.nonzero(np.diff(muscle) == 1)[0], np.nonzero(np.diff(muscle) == -1)[0]
    k = int(np.argmax(ends - starts))
    return int(starts[k]) + margin, int(ends[k]) - margin


def test_striation_in_a_longitudinal_view_of_muscle():
    """Sagittal linear images of the erector spinae (4 cm left of the midline at L2, L3 and L4), with
    and without septa: the perimysium, elongated along the fibres, which lie across the image,
    correlates the image across the beam 2 mm apart (muscle striation; about 0.06 over these 84
    patches, 0.01 the noise), where the speckle alone, and the image along the beam, are
    uncorrelated (the beam's grain is under 1 mm)."""
    probe = ProbeSpec.preset("linear")
    pixel_mm, column_mm = (1000 * s for s in probe.pixel_spacing_m())
    lateral_lag, axial_lag, size = round(2.0 / column_mm), round(2.0 / pixel_mm), 20
    rows: dict[int, tuple[int, int]] = {}  # per level, from the phantom without septa: muscle only
    acov = []
    for params in (PhantomParams(fat_septa=0.0, muscle_septa=0.0), PhantomParams()):
        patient = derive(make_phantom(0, 1.0, params))
        centres = np.stack([lm.centre for lm in patient.landmarks.values()])
        bank, patches = PatientBank([patient]), []
        for level in (2, 3, 4):  # L2, L3, L4
            point, normal = skin_point(patient.skin, centres[:, 0].mean() - 0.04, centres[level, 2])
            t = lambda a: torch.as_tensor(np.atleast_2d(a), dtype=torch.float32)  # noqa: E731
            pose = probe_pose_on_skin(t(point), t(normal), torch.tensor([math.pi / 2]))
            r0, r1 = rows.setdefault(level, _muscle_rows(patient, pose, probe))
            assert (r1 - r0) * pixel_mm > 20
            image = Renderer(bank, probe).render(pose, torch.zeros(1, dtype=torch.long))[0].numpy()
            patches += [
                realism.autocovariance(image[r : r + size, c : c + size])
                for r in range(r0, r1 - size + 1, size)
                for c in range(0, probe.image_width - size + 1, size)
            ]
        mean = np.mean(patches, axis=0)
        acov.append((mean[size - 1, size - 1 + lateral_lag], mean[size - 1 + axial_lag, size - 1]))
    (plain_lateral, plain_axial), (striated_lateral, striated_axial) = acov
    assert abs(plain_lateral) < 0.03 and abs(plain_axial) < 0.03
    assert striated_lateral > plain_lateral + 0.04 and striated_lateral > striated_axial + 0.04
