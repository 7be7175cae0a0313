"""A metal tool (the drill) in the B-mode image: a bright reflector where its shaft crosses the
imaged slab, a shadow behind it, nothing where it stays outside the slab, and the tool-free
render unchanged.

The probe looks down +y from the back of a slab patient (tests/slabs.py): a point at probe-frame
(x, y, z) (x lateral, y elevation, z depth) lies at patient (x, face + z, -y).
"""

import math

import pytest
import torch
from slabs import poses_at, slab_patient

from sim.anatomy.bank import PatientBank
from sim.errors import InputError
from sim.transforms import pose_to_matrix
from sim.ultrasound.probe import ProbeSpec
from sim.ultrasound.renderer import Renderer, RendererConfig
from sim.ultrasound.stages import DB_PER_NEPER
from sim.ultrasound.tissue import TissueTable
from sim.ultrasound.tools import TOOL_LOG_TRANSMISSION, TOOL_REFLECTION, ToolSegments, shaft_depth
from tests.host_sync import HostSyncGuard

FACE = 0.002  # the probe face, 2 mm into the slab
# A linear probe whose (sample, line) grid is the image: rows every 0.25 mm, columns every 0.5 mm.
LINEAR = ProbeSpec(kind="linear", depth_m=0.04, width_m=0.04, image_height=161, image_width=81, elevation_m=0.002)
ROW_M, COLUMN_M = 0.04 / 160, 0.04 / 80


def at(x: float, y: float, z: float) -> list[float]:
    """Patient-frame point of probe-frame (x, y, z) for a probe at `poses_at(FACE)`."""
    return [x, FACE + z, -y]


def segments(*shafts: tuple[list[float], list[float]], radius: float | torch.Tensor = 0.001) -> ToolSegments:
    """ToolSegments of (start, end) pairs in the patient frame, one per environment."""
    return ToolSegments(torch.tensor([s for s, _ in shafts]), torch.tensor([e for _, e in shafts]), radius)


@pytest.fixture(scope="module")
def bank() -> PatientBank:
    return PatientBank([slab_patient([("soft_tissue", 60)], 100, 0.001)])


@pytest.fixture(scope="module")
def renderer(bank) -> Renderer:
    return Renderer(bank, LINEAR)


def zeros(n: int = 1) -> torch.Tensor:
    return torch.zeros(n, dtype=torch.long)


def peak_samples(renderer: Renderer, poses: torch.Tensor, tools: ToolSegments) -> torch.Tensor:
    """(N, L) sample of each line's strongest echo, before compression (which saturates the
    reflector over several rows)."""
    return renderer.render_lines(poses, zeros(len(poses)), tools=tools).argmax(1)


def test_in_plane_shaft_is_a_bright_line_at_its_depth_with_a_shadow_behind(renderer):
    # Axis 21 mm deep along x from -10 to +10 mm, radius 1 mm: its front wall is 20 mm deep (row 80)
    # under the columns |x| <= 10 mm (20..60); its rounded ends reach 11 mm (columns 18 and 62).
    tools = segments((at(-0.01, 0.0, 0.021), at(0.01, 0.0, 0.021)))
    pose = poses_at(FACE)
    plain, drawn = renderer.render(pose, zeros())[0], renderer.render(pose, zeros(), tools=tools)[0]
    row, cols = round(0.020 / ROW_M), slice(20, 61)
    assert row == 80
    assert drawn[row, cols].min() > 0.95 and plain[row, cols].mean() < 0.75  # a bright line...
    assert (peak_samples(renderer, pose, tools)[0, cols] == row).all()  # ... at the predicted row of every column
    behind = slice(row + 12, None)  # past the 2 mm shaft and the PSF
    assert drawn[behind, cols].mean() < 0.3 * plain[behind, cols].mean()  # the shadow
    # lines beyond the lateral PSF's reach of the lines that meet it are untouched
    beam = renderer.lateral_half * COLUMN_M
    outside = [c for c in range(81) if abs(-0.02 + c * COLUMN_M) > 0.0115 + beam]
    assert torch.equal(drawn[:, outside], plain[:, outside])
    assert torch.equal(drawn[: row - 3], plain[: row - 3])  # and so is the tissue in front of it

    # In dB (before compression) the shadow is exactly the two walls' transmission loss, past the
    # reflector's own PSF tail (2 samples), where the whole lateral PSF lies in the shadow.
    inner = slice(cols.start + renderer.lateral_half, cols.stop - renderer.lateral_half)
    level_plain = renderer.render_lines(pose, zeros())[0][row + 3 :, inner]
    level_drawn = renderer.render_lines(pose, zeros(), tools=tools)[0][row + 3 :, inner]
    loss_db = DB_PER_NEPER * TOOL_LOG_TRANSMISSION
    assert -40 < loss_db < -30  # stronger than bone's 4 dB per wall
    torch.testing.assert_close(level_drawn - level_plain, torch.full_like(level_plain, loss_db), atol=2e-3, rtol=0)


def test_reflector_echoes_almost_like_a_mirror_and_moves_smoothly(bank):
    """Without speckle or attenuation the shaft's echo is the steel wall's reflection coefficient
    (0.93 of a perfect mirror), within the axial PSF's sub-sample loss, wherever the wall falls
    between samples."""
    quiet = TissueTable.load().replace(soft_tissue={"echogenicity_db": None, "attenuation_db_cm_mhz": 0.0})
    r = Renderer(bank, LINEAR, quiet, RendererConfig(tgc_db_cm_mhz=0.0))
    shifts = torch.arange(5) / 4 * ROW_M  # the wall at 0, 1/4, ..., 1 sample past row 80
    tools = segments(*[(at(-0.01, 0.0, 0.021 + s), at(0.01, 0.0, 0.021 + s)) for s in shifts.tolist()])
    level = r.render_lines(poses_at(FACE, 5), zeros(5), tools=tools)[:, :, 40]  # the centre line
    mirror_db = 20 * math.log10(TOOL_REFLECTION)
    peak = level.amax(1)
    assert (peak <= mirror_db + 1e-3).all() and (peak >= mirror_db - 2.5).all(), peak
    nearest = level.argmax(1).tolist()
    assert nearest[:2] == [80, 80] and nearest[3:] == [81, 81]  # (half way, the two samples tie)


def test_shaft_parallel_to_the_plane_shows_only_within_the_slab(renderer):
    """The slab is 2 mm thick (elevation_m): a 1 mm shaft parallel to the plane shows while it
    reaches |y| <= 1 mm, from its nearest point to the slab, and changes nothing beyond."""
    h, radius = LINEAR.elevation_m / 2, 0.001
    offsets = [h + radius + 1e-4, -(h + radius + 1e-4), h + radius - 2e-4]
    tools = segments(*[(at(-0.01, y, 0.021), at(0.01, y, 0.021)) for y in offsets], radius=radius)
    poses = poses_at(FACE, 3)
    plain = renderer.render(poses, zeros(3))
    drawn = renderer.render(poses, zeros(3), tools=tools)
    assert torch.equal(drawn[:2], plain[:2])  # just outside, on either side: bit-identical
    assert not torch.equal(drawn[2], plain[2])
    # Just inside, the slab's edge (y = h) passes 0.8 mm from the axis: the front lies
    # sqrt(1 - 0.8^2) = 0.6 mm before it, 20.4 mm deep, between rows 81 and 82.
    start, end, radii = (t[2:] for t in tools.tensors(3, torch.device("cpu")))
    depth = shaft_depth(poses[2:], start, end, radii, renderer.origins, renderer.dirs, h, LINEAR.depth_m)[0]
    expected = 0.021 - math.sqrt(radius**2 - (offsets[2] - h) ** 2)
    torch.testing.assert_close(depth[20:61], torch.full((41,), expected), atol=1e-7, rtol=0)
    assert ((peak_samples(renderer, poses, tools)[2, 20:61] - expected / ROW_M).abs() <= 1).all()


def test_oblique_shaft_shows_only_near_its_crossing(renderer):
    """A shaft crossing the image plane at 30 degrees (axis through x = 0, 25 mm deep, turned out of
    the plane about the depth axis) meets the 2 mm slab only within |x| <= (h + r / cos 30) / tan 30."""
    angle, radius, depth = math.radians(30), 0.0005, 0.025
    h = LINEAR.elevation_m / 2
    u = (math.cos(angle), math.sin(angle))  # (x, y) direction of the axis
    tools = segments((at(-0.02 * u[0], -0.02 * u[1], depth), at(0.02 * u[0], 0.02 * u[1], depth)), radius=radius)
    pose = poses_at(FACE)
    plain, drawn = renderer.render(pose, zeros())[0], renderer.render(pose, zeros(), tools=tools)[0]
    x = -0.02 + torch.arange(81) * COLUMN_M
    reach = (h + radius / math.cos(angle)) / math.tan(angle) + renderer.lateral_half * COLUMN_M  # and the PSF's
    far = (x.abs() > reach + 1e-4).nonzero()[:, 0]
    assert torch.equal(drawn[:, far], plain[:, far])
    # Where the axis itself lies in the slab (|x| tan 30 <= h) the lines meet its front at 24.5 mm.
    near = (x.abs() * math.tan(angle) <= h - 1e-4).nonzero()[:, 0]
    row = round((depth - radius) / ROW_M)
    assert len(near) >= 5 and drawn[row, near].min() > 0.95
    assert (peak_samples(renderer, pose, tools)[0, near] == row).all()
    # The segment the image shows is short: at most 2 * reach wide.
    changed = (drawn != plain).any(0).nonzero()[:, 0]
    assert (x[changed].abs() <= reach + 1e-4).all()


def test_shaft_through_the_plane_is_a_dot_at_its_pixel_in_a_convex_image(bank):
    """A shaft along the elevation axis through probe-frame (x0, z0) is a dot: the brightest
    pixels lie at its front, r before (x0, z0) along the line through it, scan-converted."""
    quiet = TissueTable.load().replace(soft_tissue={"echogenicity_db": None, "attenuation_db_cm_mhz": 0.0})
    probe = ProbeSpec(kind="convex", depth_m=0.05, fov_deg=60.0, radius_m=0.03, lines=96, samples=200,
                      image_height=128, image_width=128, elevation_m=0.004)  # fmt: skip
    r = Renderer(bank, probe, quiet, RendererConfig(tgc_db_cm_mhz=0.0, gain_db=-20.0))
    x0, z0, radius = 0.008, 0.03, 0.001
    tools = segments((at(x0, -0.02, z0), at(x0, 0.02, z0)), radius=radius)
    img = r.render(poses_at(FACE), zeros(), tools=tools)[0]
    assert img.max() > 0.5
    bright = img >= 0.9 * img.max()
    xz = probe.pixel_positions()[bright].float()
    apex = torch.tensor([0.0, -probe.radius_m])
    centre = torch.tensor([x0, z0])
    front = centre - radius * (centre - apex) / (centre - apex).norm()
    pixel = probe.pixel_spacing_m()[0]
    assert (xz.mean(0) - front).norm() < 1.5 * pixel, (xz.mean(0), front)
    assert (xz - front).norm(dim=1).max() < 4 * pixel  # a dot, not a line


def _brute_depth(pose, start, end, radius, probe, t_step=2.5e-5, elevations=21):
    """Least depth along each line of a dense grid of strip points within `radius` of the segment
    (patient frame; inf where none), with `shaft_depth`'s rule: a hit lies in [0, depth_m]."""
    origins, dirs, _ = probe.scan_lines()
    t = torch.arange(-0.02, probe.depth_m + t_step, t_step, dtype=torch.float64)
    y = torch.linspace(-probe.elevation_m / 2, probe.elevation_m / 2, elevations, dtype=torch.float64)
    local = origins.double()[:, None, None] + dirs.double()[:, None, None] * t[:, None, None]  # (L, T, 1, 3)
    local = local + y[:, None] * torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)  # (L, T, E, 3)
    m = pose_to_matrix(pose.double())
    points = local @ m[:, :3].T + m[:, 3]
    axis = (end - start).double()
    s = (((points - start.double()) @ axis) / axis.dot(axis)).clamp(0, 1)
    inside = (points - start.double() - s[..., None] * axis).norm(dim=-1) <= radius
    first = torch.where(inside.any(-1), t, torch.inf).amin(1)
    return torch.where((first >= 0) & (first <= probe.depth_m), first, torch.inf)


def test_closed_form_depth_matches_a_dense_search():
    """Random shafts and tilted convex probes: the closed form agrees with a dense search of the
    strip, bracketed by a slightly thinner and a slightly thicker shaft (the grid's resolution)."""
    probe = ProbeSpec(kind="convex", depth_m=0.04, fov_deg=60.0, radius_m=0.02, lines=24, samples=64,
                      image_height=32, image_width=32, elevation_m=0.002)  # fmt: skip
    origins, dirs, _ = probe.scan_lines()
    g = torch.Generator().manual_seed(0)
    eps, compared = 1e-4, 0
    for _ in range(16):
        q = torch.randn(4, generator=g)
        q = q / q.norm()
        pose = torch.cat([torch.randn(3, generator=g) * 0.01, q])
        rot = pose_to_matrix(pose)[:, :3]
        # A shaft through a point 10-30 mm deep near the image plane, in a random direction.
        local = torch.tensor([-0.01, -0.002, 0.01]) + torch.rand(3, generator=g) * torch.tensor([0.02, 0.004, 0.02])
        centre = rot @ local + pose[:3]
        direction = rot @ (torch.randn(3, generator=g) * torch.tensor([1.0, 0.3, 1.0]))  # mostly in-plane
        direction = direction / direction.norm()
        half = 0.005 + 0.02 * torch.rand(1, generator=g).item()
        start, end = centre - half * direction, centre + half * direction
        radius = 0.0005 + 0.0015 * torch.rand(1, generator=g).item()
        closed = shaft_depth(pose[None], start[None], end[None], torch.tensor([radius]), origins, dirs,
                             probe.elevation_m / 2, probe.depth_m)[0].double()  # fmt: skip
        thinner = _brute_depth(pose, start, end, radius - eps, probe)
        thicker = _brute_depth(pose, start, end, radius + eps, probe)
        clear = (thinner > 5e-4) & torch.isfinite(thinner)  # hits well past the face
        assert torch.isfinite(closed[clear]).all()
        assert (closed[clear] <= thinner[clear] + 1e-6).all()
        hit = torch.isfinite(closed) & (closed > 5e-4)
        assert torch.isfinite(thicker[hit]).all()
        assert (thicker[hit] <= closed[hit] + 3e-5).all()
        compared += int(hit.sum())
    assert compared > 50  # the shafts are hit often enough to mean something


def test_no_tools_is_bit_identical_to_a_tool_far_away(bank):
    poses = poses_at(FACE, 3, z_step=0.004)
    far = segments(*[(at(-0.01, 0.5, 0.02), at(0.01, 0.5, 0.02))] * 3)
    for kind in ("linear", "convex", "phased"):
        r = Renderer(bank, ProbeSpec.preset(kind, image_height=48, image_width=40))
        params = r.sample_params(3, torch.Generator().manual_seed(2))
        assert torch.equal(r.render(poses, zeros(3), params), r.render(poses, zeros(3), params, tools=far))
        assert torch.equal(r.render_lines(poses, zeros(3)), r.render_lines(poses, zeros(3), tools=far))


def test_tools_are_per_environment_and_chunking_keeps_them(bank, renderer):
    """Each environment sees its own shaft and radius; chunked batches render the same."""
    poses = poses_at(FACE, 4)
    shafts = [(at(-0.01, 0.0, 0.01 + 0.005 * i), at(0.01, 0.0, 0.01 + 0.005 * i)) for i in range(4)]
    shafts[2] = (at(-0.01, 0.5, 0.02), at(0.01, 0.5, 0.02))  # environment 2's shaft is far away
    tools = segments(*shafts, radius=torch.tensor([0.001, 0.0015, 0.001, 0.002]))
    whole = renderer.render(poses, zeros(4), tools=tools)
    chunked = Renderer(bank, LINEAR, config=RendererConfig(chunk_samples=161 * 81)).render(poses, zeros(4), tools=tools)
    assert torch.equal(whole, chunked)
    assert torch.equal(whole[2], renderer.render(poses[:1], zeros())[0])
    rows = [round((0.01 + 0.005 * i - r) / ROW_M) for i, r in enumerate([0.001, 0.0015, 0.001, 0.002])]
    peaks = peak_samples(renderer, poses, tools)
    for i in (0, 1, 3):
        assert (peaks[i, 30:51] == rows[i]).all()
    empty = ToolSegments(torch.zeros(0, 3), torch.zeros(0, 3), 0.001)
    assert renderer.render(poses[:0], zeros(0), tools=empty).shape == (0, 161, 81)


def test_unchecked_tool_render_is_sync_free(renderer):
    poses, idx = poses_at(FACE, 2), zeros(2)
    tools = segments(*[(at(-0.01, 0.0, 0.021), at(0.01, 0.0, 0.021))] * 2, radius=torch.tensor([0.001, 0.002]))
    params = renderer.default_params(2)
    with HostSyncGuard():
        renderer.render(poses, idx, params, check=False, tools=tools)
        renderer.render(poses, idx, params, check=False, tools=ToolSegments(tools.start, tools.end, 0.001))


def test_compiled_tool_render_matches_eager(bank):
    probe = ProbeSpec.preset("convex", image_height=48, image_width=40, depth_m=0.05)
    poses = poses_at(FACE, 2)
    tools = segments((at(-0.02, 0.0, 0.02), at(0.02, 0.0, 0.03)), (at(0.0, -0.01, 0.015), at(0.0, 0.01, 0.025)))
    eager = Renderer(bank, probe).render(poses, zeros(2), tools=tools)
    compiled = Renderer(bank, probe, config=RendererConfig(compile=True)).render(poses, zeros(2), tools=tools)
    assert not torch.equal(eager, Renderer(bank, probe).render(poses, zeros(2)))
    torch.testing.assert_close(compiled, eager, atol=1e-4, rtol=0)


def test_bad_tools_are_refused_naming_the_input(renderer):
    poses, idx = poses_at(FACE, 2), zeros(2)
    good = segments(*[(at(-0.01, 0.0, 0.02), at(0.01, 0.0, 0.02))] * 2)
    start, end = good.start, good.end
    nan = start.clone()
    nan[1, 0] = float("nan")
    cases = [
        (ToolSegments(nan, end, 0.001), r"tools\.start: expected finite values"),
        (ToolSegments(start, end[:, :2], 0.001), r"tools\.end: expected a float tensor of shape \(2, 3\)"),
        (ToolSegments(start[:1], end, 0.001), r"tools\.start: expected a float tensor of shape \(2, 3\)"),
        (ToolSegments(start.long(), end, 0.001), r"tools\.start: expected a float tensor"),
        (ToolSegments(start, end, 0.0), r"tools\.radius_m: expected a finite number in \(0, inf\)"),
        (ToolSegments(start, end, float("inf")), r"tools\.radius_m: expected a finite number"),
        (ToolSegments(start, end, torch.tensor([0.001, -0.001])), r"tools\.radius_m: expected finite values > 0"),
        (ToolSegments(start, end, torch.tensor([0.001] * 3)), r"tools\.radius_m: expected a number or a float tensor"),
        ((start, end, 0.001), r"tools: expected a ToolSegments or None, got tuple"),
    ]
    for tools, message in cases:
        with pytest.raises(InputError, match=message):
            renderer.render(poses, idx, tools=tools)
