"""The renderer against known physics: speckle statistics, attenuation, reflection, shadowing,
sector geometry, coupling and speckle fixed in the patient frame.

Test patients are small slabs of tissue built here; the probe looks down +y (anterior) from the
back, as it does on a prone patient.
"""

import numpy as np
import pytest
import torch
from slabs import poses_at, slab_patient

from sim.anatomy.bank import PatientBank
from sim.anatomy.tissues import TISSUE_ID
from sim.ultrasound.probe import ProbeSpec
from sim.ultrasound.renderer import Renderer, RendererConfig
from sim.ultrasound.tissue import TissueTable


def envelope(level_db: torch.Tensor) -> torch.Tensor:
    return 10 ** (level_db / 20)


def test_homogeneous_speckle_is_rayleigh():
    table = TissueTable.load().replace(soft_tissue={"attenuation_db_cm_mhz": 0.0})
    bank = PatientBank([slab_patient([("soft_tissue", 80)], 120, 0.001)])
    probe = ProbeSpec(kind="linear", depth_m=0.06, width_m=0.06, image_height=160, image_width=128)
    r = Renderer(bank, probe, table, RendererConfig(tgc_db_cm_mhz=0.0))
    level = r.render_lines(poses_at(0.002, 4, z=-0.02, z_step=0.013), torch.zeros(4, dtype=torch.long))
    inner = level[:, 10:, :]
    env = envelope(inner)
    ratio = (env.mean() / env.std()).item()
    assert abs(ratio - 1.913) < 0.1, ratio
    assert abs(inner.std().item() - 5.57) < 0.5, inner.std().item()


def test_sparse_scatterers_are_fewer_and_brighter_at_the_same_mean_power():
    """Fully developed speckle has a Rayleigh envelope (mean / std 1.91); a tissue with one
    scatterer in twenty cells (fat's septa) is spottier, with the same mean echo power."""
    bank = PatientBank([slab_patient([("soft_tissue", 80)], 120, 0.001)])
    probe = ProbeSpec(kind="linear", depth_m=0.06, width_m=0.06, image_height=160, image_width=128)
    poses, idx = poses_at(0.002, 4, z=-0.02, z_step=0.013), torch.zeros(4, dtype=torch.long)
    dense = TissueTable.load().replace(soft_tissue={"attenuation_db_cm_mhz": 0.0})
    sparse = dense.replace(soft_tissue={"scatterer_density": 0.05})

    def envelope_of(table: TissueTable) -> torch.Tensor:
        r = Renderer(bank, probe, table, RendererConfig(tgc_db_cm_mhz=0.0))
        return envelope(r.render_lines(poses, idx)[:, 10:, :])

    full, spotty = envelope_of(dense), envelope_of(sparse)
    assert (full.mean() / full.std()).item() == pytest.approx(1.913, abs=0.1)
    assert (spotty.mean() / spotty.std()).item() < 1.4
    assert (spotty.square().mean() / full.square().mean()).item() == pytest.approx(1.0, rel=0.25)


def test_attenuation_slope_matches_table():
    alpha, f = TissueTable.load().rows["soft_tissue"].attenuation_db_cm_mhz, 5.0
    bank = PatientBank([slab_patient([("soft_tissue", 90)], 100, 0.001)])
    probe = ProbeSpec(kind="linear", frequency_mhz=f, depth_m=0.08, width_m=0.05, image_height=200, image_width=128)
    r = Renderer(bank, probe, config=RendererConfig(tgc_db_cm_mhz=0.0))
    n = 8
    poses = poses_at(0.002, n, z=-0.016, z_step=0.004)
    mean_db = r.render_lines(poses, torch.zeros(n, dtype=torch.long)).mean(dim=(0, 2))
    depth_cm = r.dist * 100
    keep = slice(5, None)
    slope = np.polyfit(depth_cm[keep].numpy(), mean_db[keep].numpy(), 1)[0]
    expected = -2 * alpha * f
    assert abs(slope - expected) < 0.1 * abs(expected), (slope, expected)


@pytest.mark.parametrize("upper,lower", [("fat", "muscle"), ("muscle", "bone"), ("water", "soft_tissue")])
def test_planar_interface_echo_matches_reflection_coefficient(upper, lower):
    table = TissueTable.load()
    quiet = {name: {"echogenicity_db": None, "attenuation_db_cm_mhz": 0.0} for name in (upper, lower)}
    table = table.replace(**quiet)
    z1, z2 = table.rows[upper].impedance_mrayl, table.rows[lower].impedance_mrayl
    expected = ((z2 - z1) / (z2 + z1)) ** 2
    spacing = 0.0001  # 0.1 mm voxels, finer than the 0.2 mm samples
    bank = PatientBank([slab_patient([(upper, 150), (lower, 150)], 200, spacing)])
    probe = ProbeSpec(kind="linear", depth_m=0.0199, width_m=0.015, image_height=100, image_width=32)
    r = Renderer(bank, probe, table, RendererConfig(tgc_db_cm_mhz=0.0))
    # The interface lies between voxel centres 149 and 150 (y = 14.95 mm); put it mid-step.
    face_y = 0.01495 - 0.0101
    peak = envelope(r.render_lines(poses_at(face_y), torch.zeros(1, dtype=torch.long))).amax(dim=1)
    measured = (peak**2).mean().item()
    assert abs(measured - expected) < 0.1 * expected, (measured, expected)


def test_bone_casts_a_shadow():
    lateral, spacing = 100, 0.0005
    tissue_layers = [("soft_tissue", 100)]
    patient = slab_patient(tissue_layers, lateral, spacing)
    patient.tissue[: lateral // 2, 40:50, :] = TISSUE_ID["bone"]  # bone under the left half (x < 0)
    bank = PatientBank([patient])
    probe = ProbeSpec(kind="linear", depth_m=0.045, width_m=0.04, image_height=180, image_width=160)
    r = Renderer(bank, probe)
    img_db = r.render_lines(poses_at(0.001, 2, z_step=0.01), torch.zeros(2, dtype=torch.long))
    depth = r.dist
    below = (depth > 0.030) & (depth < 0.040)
    x = r.origins[:, 0]
    under_bone = img_db[:, below][:, :, x < -0.005].mean()
    beside = img_db[:, below][:, :, x > 0.005].mean()
    assert beside - under_bone >= 20.0, (beside.item(), under_bone.item())


def test_convex_sector_matches_spec():
    table = TissueTable.load().replace(soft_tissue={"attenuation_db_cm_mhz": 0.0})
    bank = PatientBank([slab_patient([("soft_tissue", 200)], 360, 0.001)])
    probe = ProbeSpec(kind="convex", depth_m=0.12, fov_deg=60.0, radius_m=0.04, image_height=200, image_width=200)
    r = Renderer(bank, probe, table, RendererConfig(gain_db=40.0))
    img = r.render(poses_at(0.008), torch.zeros(1, dtype=torch.long))[0]  # whole face arc in tissue
    xz = probe.pixel_positions()
    lit = img > 0
    x, z = xz[..., 0][lit], xz[..., 1][lit]
    radius = torch.sqrt(x**2 + (z + probe.radius_m) ** 2)
    angle = torch.rad2deg(torch.atan2(x, z + probe.radius_m))
    pixel = probe.pixel_spacing_m()[0]
    assert abs(radius.max().item() - (probe.radius_m + probe.depth_m)) < 1.5 * pixel
    assert abs(angle.max().item() - 30.0) < 1.0 and abs(angle.min().item() + 30.0) < 1.0
    assert lit.float().mean() > 0.3  # the sector itself is bright


def test_probe_off_the_skin_gives_a_dark_image():
    bank = PatientBank([slab_patient([("air", 20), ("skin", 3), ("soft_tissue", 170)], 260, 0.001)])
    for kind in ("linear", "convex"):
        r = Renderer(bank, ProbeSpec.preset(kind, image_height=96, image_width=96), config=RendererConfig(gain_db=20.0))
        lifted = r.render(poses_at(0.015), torch.zeros(1, dtype=torch.long))
        touching = r.render(poses_at(0.0215), torch.zeros(1, dtype=torch.long))
        assert lifted.max() < 0.02
        assert touching.mean() > 0.1


def test_speckle_is_fixed_in_the_patient_frame():
    bank = PatientBank([slab_patient([("soft_tissue", 60)], 120, 0.001)])
    probe = ProbeSpec(kind="linear", depth_m=0.03, width_m=0.05, image_height=120, image_width=201)  # 0.25 mm columns
    r = Renderer(bank, probe, config=RendererConfig(tgc_db_cm_mhz=0.0))
    shift = 0.0005  # two columns
    poses = torch.cat([poses_at(0.002), poses_at(0.002, x=shift), poses_at(0.002, z=0.01)])
    img = r.render(poses, torch.zeros(3, dtype=torch.long))
    a, moved, elsewhere = img[0, 10:, 2:], img[1, 10:, :-2], img[2, 10:, 2:]

    def corr(u: torch.Tensor, v: torch.Tensor) -> float:
        """Correlation of the texture, with the depth-dependent brightness removed."""
        u, v = u - u.mean(1, keepdim=True), v - v.mean(1, keepdim=True)
        return torch.corrcoef(torch.stack([u.flatten(), v.flatten()]))[0, 1].item()

    assert corr(a, moved) > 0.9
    assert abs(corr(a, elsewhere)) < 0.2


def test_elevation_thickness_averages_across_the_slice():
    """A thin bone plate beside the image plane shows only when the slice is thick enough."""
    spacing = 0.0002
    patient = slab_patient([("soft_tissue", 150)], 200, spacing)
    # Plate 20 mm deep, 0.6 mm thick along z (elevation), centred 1 mm beside the image plane.
    z_centre = 100 + int(0.001 / spacing)
    patient.tissue[:, 100:105, z_centre - 1 : z_centre + 2] = TISSUE_ID["bone"]
    bank = PatientBank([patient])
    quiet = TissueTable.load().replace(soft_tissue={"echogenicity_db": None, "attenuation_db_cm_mhz": 0.0})

    def peak_echo(elevation_m: float, rays: int) -> float:
        probe = ProbeSpec(kind="linear", depth_m=0.025, width_m=0.01, image_height=120, image_width=16,
                          elevation_m=elevation_m, elevation_rays=rays)  # fmt: skip
        r = Renderer(bank, probe, quiet, RendererConfig(tgc_db_cm_mhz=0.0))
        return envelope(r.render_lines(poses_at(0.001), torch.zeros(1, dtype=torch.long))).max().item()

    assert peak_echo(0.0, 1) < 1e-3  # a thin beam misses the plate
    assert peak_echo(0.004, 5) > 0.05  # a 4 mm slice catches it
