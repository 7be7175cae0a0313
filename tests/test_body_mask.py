"""The body in a CT: a gown, a blanket or the table's pad touching the patient is not the skin."""

import dataclasses
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from sim.anatomy.tissue_map import TissueMap
from sim.errors import InputError

EXAMPLE = Path(__file__).resolve().parents[1] / "assets" / "patients" / "totalseg_example"
SPACING = np.array([0.003, 0.003, 0.003])


def _gowned_block() -> np.ndarray:
    """(30, 30, 30) HU: a soft-tissue block (y >= 10) in air, and a one-voxel gown at y = 7 that
    lies 6 mm off its back and touches it along one edge (x = 3)."""
    ct = np.full((30, 30, 30), -1000.0, np.float32)
    ct[3:27, 10:27, 3:27] = 40.0
    ct[3:27, 7, 3:27] = -300.0  # the gown
    ct[3, 7:10, 3:27] = -300.0  # where it touches
    return ct


def test_opening_cuts_off_a_touching_gown():
    tmap = TissueMap.load()
    assert tmap.body_open_mm == 3.0
    body = tmap.body_mask_from_ct(_gowned_block(), SPACING)
    assert not body[4:27, 7].any()  # the gown is gone, but for its reach next to the body's edge
    assert body[3:27, 10:27, 3:27].all() and body.sum() <= 24 * 17 * 24 + 24 * 3  # the block, whole
    bare = dataclasses.replace(tmap, body_open_mm=0.0).body_mask_from_ct(_gowned_block(), SPACING)
    assert bare[3:27, 7, 3:27].all()  # without the opening the gown is body: the probe would sit on it


def test_the_shipped_ct_back_is_skin_not_its_gown():
    """Under the posterior surface of the body, over L1-L5, no air for 15 mm: the surface is the back.
    Without the opening, 37 % of these columns start on the gown with air beneath it."""
    ct = np.asarray(nib.load(EXAMPLE / "example_ct.nii.gz").dataobj, np.float32)
    seg = np.asarray(nib.load(EXAMPLE / "example_seg_fast_force_split.nii.gz").dataobj, np.uint8)
    names = {v: int(k) for k, v in json.loads((EXAMPLE / "class_map.json").read_text())["total"].items()}
    lumbar = np.argwhere(np.isin(seg, [names[f"vertebrae_L{i}"] for i in range(1, 6)]))
    lo, hi = lumbar.min(0), lumbar.max(0)
    box = (slice(lo[0] - 5, hi[0] + 6), slice(None), slice(lo[2], hi[2] + 1))

    def air_under_surface(body: np.ndarray) -> float:
        first = np.argmax(body[box], axis=1)  # (x, z): RAS, the back at low y
        below = first[:, None, :] + np.arange(5)[None, :, None]  # 15 mm at 3 mm voxels
        hu = np.take_along_axis(ct[box], below, axis=1)
        return float((hu < -500).any(axis=1).mean())

    tmap = TissueMap.load()
    assert air_under_surface(tmap.body_mask_from_ct(ct, SPACING)) == 0.0
    assert air_under_surface(dataclasses.replace(tmap, body_open_mm=0.0).body_mask_from_ct(ct, SPACING)) > 0.3


@pytest.mark.parametrize("value", [-1.0, 25.0, "3", True])
def test_bad_opening_radius(tmp_path, value):
    table = (Path(__file__).resolve().parents[1] / "conf" / "anatomy" / "tissue_map.yaml").read_text()
    path = tmp_path / "tissue_map.yaml"
    path.write_text(table.replace("body_open_mm: 3.0", f"body_open_mm: {json.dumps(value)}"))
    with pytest.raises(InputError, match="body_open_mm"):
        TissueMap.load(path)


def test_no_body_thick_enough():
    ct = np.full((20, 20, 20), -1000.0, np.float32)
    ct[5:15, 8, 5:15] = 40.0  # a sheet, nothing else
    with pytest.raises(InputError, match="thick"):
        TissueMap.load().body_mask_from_ct(ct, SPACING)
