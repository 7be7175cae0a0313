"""Procedural phantom: grid, determinism, anatomy and CT sanity, bad inputs."""

from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import ndimage

import sim.anatomy.phantom as phantom_module
from sim.anatomy.meshes import mask_mesh
from sim.anatomy.phantom import CANCELLOUS_HU, CORTICAL_HU, TISSUE_HU, PhantomParams, make_phantom
from sim.anatomy.tissues import TISSUE_ID
from sim.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
LEVELS = ["T12", "L1", "L2", "L3", "L4", "L5", "S1"]


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(seed=0, spacing_mm=2.0)


def test_shapes_dtypes_affine(phantom):
    p = phantom
    assert p.tissue.dtype == np.uint8 and p.structures.dtype == np.uint8 and p.ct.dtype == np.float32
    assert p.tissue.shape == p.structures.shape == p.ct.shape
    assert np.allclose(p.affine[:3, :3], np.diag([0.002] * 3)) and np.allclose(p.affine[3], [0, 0, 0, 1])
    extent = p.spacing * np.array(p.shape)
    assert np.all(extent > [0.3, 0.2, 0.25]) and np.all(extent < [0.4, 0.35, 0.35])  # torso, T12-S1
    for level in LEVELS:
        assert f"vertebrae_{level}" in p.structure_names
    for name in [
        "intervertebral_disc",
        "spinal_canal",
        "spinal_cord",
        "kidney_left",
        "kidney_right",
        "liver",
        "aorta",
        "inferior_vena_cava",
        "autochthon_left",
        "autochthon_right",
        "iliopsoas_left",
        "iliopsoas_right",
        "subcutaneous_fat",
    ]:
        sid = p.structure_names[name]
        assert (p.structures == sid).any(), name


def test_deterministic_and_distinct():
    a, b = make_phantom(seed=5, spacing_mm=3.0), make_phantom(seed=5, spacing_mm=3.0)
    assert np.array_equal(a.structures, b.structures) and np.array_equal(a.ct, b.ct)
    assert np.array_equal(a.affine, b.affine)
    c = make_phantom(seed=6, spacing_mm=3.0)
    assert c.shape != a.shape or not np.array_equal(a.structures, c.structures)
    assert a.name != c.name


def _voxel(p, xyz_m):
    return tuple(np.round(np.linalg.inv(p.affine) @ np.r_[xyz_m, 1.0]).astype(int)[:3])


def test_bone_under_back_skin_at_midline(phantom):
    p = phantom
    i, _, k = _voxel(p, [0.0, 0.0, 0.0])  # the L3 body centre is the origin
    column = p.tissue[i, :, k]
    skin = np.argmax(column != TISSUE_ID["air"])
    bone = np.argmax(column == TISSUE_ID["bone"])
    depth = (bone - skin) * p.spacing[1]
    assert 0.015 <= depth <= 0.06
    assert column[skin] == TISSUE_ID["skin"] and column[skin + 3] == TISSUE_ID["fat"]
    assert p.structures[i, bone, k] == p.structure_names["vertebrae_L3"]


def test_vertebrae_connected_and_ordered(phantom):
    p = phantom
    heights = []
    for level in LEVELS:
        mask = p.structures == p.structure_names[f"vertebrae_{level}"]
        _, n = ndimage.label(mask, structure=np.ones((3, 3, 3)))
        assert n == 1, level
        heights.append(np.argwhere(mask)[:, 2].mean())
    assert np.all(np.diff(heights) < 0)  # T12 on top, S1 at the bottom


def test_ct_per_tissue(phantom):
    p = phantom
    for name in ["fat", "muscle", "water", "blood", "air", "liver", "kidney", "skin"]:
        values = p.ct[p.tissue == TISSUE_ID[name]]
        assert abs(np.median(values) - TISSUE_HU[name]) < 15, name
    # Every bone is a cortical shell (CORTICAL_HU) over a cancellous core (CANCELLOUS_HU): at 2 mm voxels
    # the outermost voxel layer (centre 1 mm deep, within the 1.5 mm cortex) is cortex, deeper ones (3 mm) not.
    bone = p.tissue == TISSUE_ID["bone"]
    layer = ndimage.distance_transform_edt(bone)  # 1 on the outermost layer
    assert abs(np.median(p.ct[bone & (layer == 1)]) - CORTICAL_HU) < 15
    assert abs(np.median(p.ct[bone & (layer >= 2)]) - CANCELLOUS_HU) < 15
    assert 5 < np.std(p.ct[p.tissue == TISSUE_ID["fat"]]) < 20  # mild noise


def test_sizes_follow_params():
    thin = make_phantom(seed=1, spacing_mm=2.0, params=PhantomParams(fat_mm=(10.0, 10.0), muscle_mm=(12.0, 12.0)))
    thick = make_phantom(seed=1, spacing_mm=2.0, params=PhantomParams(fat_mm=(30.0, 30.0), muscle_mm=(12.0, 12.0)))
    fat = thin.structure_names["subcutaneous_fat"]
    assert (thick.structures == fat).sum() > 2 * (thin.structures == fat).sum()


def _back_and_spine_mm(p, level: str) -> tuple[float, float]:
    """(skin y, cover) at the midline over `level`: the back skin's y and its least depth over the
    spinous process (mm), within 20 mm head-foot of the vertebra's centre."""
    ks = np.argwhere(p.structures == p.structure_names[f"vertebrae_{level}"])[:, 2]
    k0 = int(np.round(ks.mean()))
    i = _voxel(p, [0.0, 0.0, 0.0])[0]
    reach = int(round(0.02 / p.spacing[2]))
    columns = p.tissue[i, :, k0 - reach : k0 + reach + 1]
    skin = np.argmax(columns != TISSUE_ID["air"], axis=0)
    bone = np.where((columns == TISSUE_ID["bone"]).any(axis=0), np.argmax(columns == TISSUE_ID["bone"], axis=0), 10**6)
    mm = 1000 * p.spacing[1]
    return float(skin[reach] * mm + p.affine[1, 3] * 1000), float((bone - skin).min() * mm)


def test_back_curve_flattens_the_back_over_the_lordosis():
    """back_curve 1: the back skin runs parallel to the spine (the same cover over L1, L3 and L5);
    0: a flat back (as a supine CT's), the lordosis bringing L1 and L5 nearer the skin, but never
    nearer than half the L3 cover (here 20 mm: 10 mm)."""
    fixed = dict(fat_mm=(10.0, 10.0), muscle_mm=(10.0, 10.0), lordosis_deg=(55.0, 55.0))
    curved, flat = (
        make_phantom(seed=3, spacing_mm=2.0, params=PhantomParams(**fixed, back_curve=(c, c))) for c in (1.0, 0.0)
    )
    (c_l1, cov_c1), (c_l3, cov_c3), (c_l5, cov_c5) = (_back_and_spine_mm(curved, v) for v in ("L1", "L3", "L5"))
    (f_l1, cov_f1), (f_l3, cov_f3), (f_l5, cov_f5) = (_back_and_spine_mm(flat, v) for v in ("L1", "L3", "L5"))
    assert abs(cov_c1 - cov_c3) <= 4 and abs(cov_c5 - cov_c3) <= 4
    assert c_l1 < c_l3 - 5 and c_l5 < c_l3 - 5  # the curved back follows the lordosis (posterior: smaller y)
    assert abs(f_l1 - f_l3) < abs(c_l1 - c_l3) - 3 and abs(f_l5 - f_l3) < abs(c_l5 - c_l3) - 3
    assert cov_f1 < cov_c1 - 3 and cov_f5 < cov_c5 - 3
    assert min(cov_f1, cov_f3, cov_f5) >= 10 - 2 * 2.0  # half the cover, give or take the voxels
    with pytest.raises(InputError, match="back_curve"):
        PhantomParams(back_curve=(0.5, 1.5))


def test_config_matches_defaults():
    cfg = yaml.safe_load((ROOT / "conf" / "patient" / "phantom.yaml").read_text())
    assert cfg["common"]["source"] == "phantom"
    assert PhantomParams.from_dict(cfg["common"]["params"]) == PhantomParams()
    assert not {e["seed"] for e in cfg["train"]} & {e["seed"] for e in cfg["test"]}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(spacing_mm=0.0), "spacing_mm"),
        (dict(spacing_mm=-1.0), "spacing_mm"),
        (dict(spacing_mm=float("nan")), "spacing_mm"),
        (dict(spacing_mm=0.05), "spacing_mm"),
        (dict(seed=-1), "seed"),
        (dict(seed=1.5), "seed"),
        (dict(params={"fat_mm": (1, 2)}), "params"),
    ],
)
def test_bad_inputs(kwargs, match):
    with pytest.raises(InputError, match=match):
        make_phantom(**kwargs)


def test_bad_params():
    with pytest.raises(InputError, match="unknown"):
        PhantomParams.from_dict({"fat_thickness": [1, 2]})
    with pytest.raises(InputError, match="fat_mm"):
        PhantomParams.from_dict({"fat_mm": [20, 10]})
    with pytest.raises(InputError, match="lordosis_deg"):
        PhantomParams.from_dict({"lordosis_deg": "steep"})
    with pytest.raises(InputError, match="rotation_deg"):
        PhantomParams(rotation_deg=-1.0)
    with pytest.raises(InputError, match="fat_septa: expected a fraction <= 0.3"):
        PhantomParams(fat_septa=0.5)
    with pytest.raises(InputError, match="muscle_septa"):
        PhantomParams.from_dict({"muscle_septa": -0.1})


def _sharpest_curvature_per_mm(solid, spacing_mm: float = 0.25) -> float:
    """The 99th percentile of the surface curvature (1/mm) of one phantom solid rasterised alone at
    `spacing_mm` and meshed as the patient's bones are: along each mesh edge, the change of the
    vertex normal over the edge's length."""
    corners = solid.corners()
    lo, hi = corners.min(0) - 3 * spacing_mm, corners.max(0) + 3 * spacing_mm
    grid = phantom_module._Grid(lo, spacing_mm, tuple(int(n) + 1 for n in np.ceil((hi - lo) / spacing_mm)))
    region, inside = phantom_module._inside(solid, grid)
    mask = np.zeros(grid.shape, bool)
    mask[region] = inside
    mesh = mask_mesh(mask, np.diag([spacing_mm] * 3 + [1.0]))
    a, b = mesh.edges_unique.T
    bend = np.linalg.norm(mesh.vertex_normals[a] - mesh.vertex_normals[b], axis=1)
    return float(np.percentile(bend / np.linalg.norm(mesh.vertices[a] - mesh.vertices[b], axis=1), 99))


def test_posterior_elements_have_rounded_edges(monkeypatch):
    """L3's laminae, transverse and spinous processes, each meshed from 0.25 mm voxels: rounded
    (edge radius 0.8 of the smaller half thickness, 2-2.4 mm), their sharpest 1 % of surface curves
    under 3/mm (flat ends' rims and faceting); the same shapes as boxes have 90-degree edges
    that curve at 5/mm and more."""

    def sharpest() -> list[float]:
        spine = phantom_module._layout_spine(np.random.default_rng(0), PhantomParams())
        l3 = next(v for v in spine if v.name == "vertebrae_L3")
        parts = phantom_module._vertebra_solids(l3)[1]
        processes = [s for s in parts if s.kind in ("rod", "rounded_box")]
        assert len(processes) == 5  # two laminae, two transverse processes, the spinous process
        return [_sharpest_curvature_per_mm(s) for s in processes]

    assert max(sharpest()) < 3.0
    monkeypatch.setattr(phantom_module, "EDGE_ROUNDING", 0.0)  # no rounding: boxes
    assert min(sharpest()) > 5.0
