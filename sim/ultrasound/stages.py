"""The renderer's stages: pure batched tensor functions, one job each (see `renderer.py`).

Each takes every environment's data at once (no loop over environments, patients or tissue
classes) and is compiled on its own by `Renderer` when `RendererConfig.compile` is set. Shapes:
N environments, L scan lines, S samples per line, P tissue lookups per line, E elevation rays.
"""

from __future__ import annotations

import math

import torch

from sim.transforms import pose_to_matrix
from sim.ultrasound.probe import SPEED_OF_SOUND_M_S, beam_fwhm_m
from sim.ultrasound.speckle import sparse_scatterers

DB_PER_NEPER = 20.0 / math.log(10.0)
FWHM_PER_SIGMA = 2 * math.sqrt(2 * math.log(2))  # a Gaussian's full width at half maximum over its std
GEL_MRAYL = 1.48  # coupling gel (water-like) between the face and the skin
GEL_FILL_MRAYL = 1.2  # near the face, samples below this (air, mostly-air voxels) hold gel
SOFT_TISSUE_MAX_DB_CM_MHZ = 2.5  # automatic TGC compensates attenuation up to this (cartilage 2.0; bone 12)


def probe_to_voxel(poses: torch.Tensor, patient_to_voxel: torch.Tensor) -> torch.Tensor:
    """(N, 3, 4) maps from the probe frame (metres) to each environment's padded voxel indices.

    poses (N, 7) in the patient frame; patient_to_voxel (N, 3, 4). Products are summed
    elementwise (no batched matmul), so an environment's numbers do not depend on the batch size.
    """
    probe = pose_to_matrix(poses)
    m = (patient_to_voxel[:, :, :3, None] * probe[:, None]).sum(2)
    m[:, :, 3] += patient_to_voxel[:, :, 3]
    return m


def line_geometry(
    poses: torch.Tensor,
    patient_to_voxel: torch.Tensor,
    tile_offset: torch.Tensor,
    origins: torch.Tensor,
    dirs: torch.Tensor,
    speckle_pitch_m: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scan lines of every environment in voxel units and in speckle-cell units.

    poses (N, 7) probe poses in the patient frame; patient_to_voxel (N, 3, 4) and tile_offset
    (N, 3) of each environment's patient; origins and dirs (L, 3) scan lines in the probe frame.
    Returns line origins and directions (3, N, L) and the elevation axis (3, N) in voxels (per
    metre), and the lines' origins and directions (3, N, L) in speckle cells: axis-major, so the
    fused kernels read contiguous rows. Products are summed elementwise (no batched matmul), so an
    environment's numbers do not depend on the batch size: chunked batches render identical speckle.
    """
    probe = pose_to_matrix(poses)  # (N, 3, 4) probe -> patient
    rot, pos = probe[:, :, :3], probe[:, :, 3]
    to_vox = probe_to_voxel(poses, patient_to_voxel)
    line_origin = (to_vox[:, None, :, :3] * origins[None, :, None, :]).sum(-1) + to_vox[:, None, :, 3]
    line_dir = (to_vox[:, None, :, :3] * dirs[None, :, None, :]).sum(-1)
    scale = 1.0 / speckle_pitch_m
    tile_origin = (rot[:, None] * origins[None, :, None, :]).sum(-1) * scale + (pos * scale + tile_offset)[:, None]
    tile_dir = (rot[:, None] * dirs[None, :, None, :]).sum(-1) * scale
    lines = tuple(t.movedim(-1, 0).contiguous() for t in (line_origin, line_dir, tile_origin, tile_dir))
    return lines[0], lines[1], to_vox[:, :, 1].T.contiguous(), lines[2], lines[3]


def lookup_cells(
    block_offset: torch.Tensor,
    dims: torch.Tensor,
    line_origin: torch.Tensor,
    line_dir: torch.Tensor,
    elevation_dir: torch.Tensor,
    elevation: torch.Tensor,
    dist: torch.Tensor,
    index_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where every tissue lookup falls in its environment's volume: the flat index of its voxel
    cell's lowest corner and its fractional position in the cell.

    block_offset (N,) and dims (N, 3) locate each environment's padded volume in the bank's flat
    array; line_origin and line_dir (3, N, L) are the scan lines and elevation_dir (3, N) the
    elevation axis per metre in voxel units, one contiguous block per axis (so fused loops
    vectorise over lines); elevation (E, P) the E elevation rays' offsets at each lookup (metres,
    `ProbeSpec.elevation_offsets`); dist (P,) distances along the lines in metres; index_dtype
    int32 or int64 (for banks over 2^31 voxels). Returns the corner index (N, E, P, L) and the
    fractions fx, fy, fz (N, E, P, L). A stage of its own so that these four, and not the eight
    corner weights made from them, are what is materialised for `sample_tissue`.
    """
    d = dist[None, None, :, None]  # (1, 1, P, 1)
    e = elevation[None, :, :, None]  # (1, E, P, 1)
    hi = (dims - 1).to(dist.dtype) - 1e-3

    def axis(a: int) -> torch.Tensor:  # (N, E, P, L) voxel coordinate along axis a, clamped into the volume
        at = line_origin[a][:, None, None] + line_dir[a][:, None, None] * d + elevation_dir[a][:, None, None, None] * e
        return torch.minimum(at.clamp_min(0), hi[:, a, None, None, None])

    x, y, z = (axis(a) for a in range(3))
    x0, y0, z0 = x.floor(), y.floor(), z.floor()
    s_i, s_j = cell_strides(dims, index_dtype)
    base = block_offset.to(index_dtype)[:, None, None, None] + x0.to(index_dtype) * s_i + y0.to(index_dtype) * s_j
    return base + z0.to(index_dtype), x - x0, y - y0, z - z0


def cell_strides(dims: torch.Tensor, index_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat-index strides (N, 1, 1, 1) of the first and second voxel axes; dims (N, 3)."""
    return (
        (dims[:, 1] * dims[:, 2]).to(index_dtype)[:, None, None, None],
        dims[:, 2].to(index_dtype)[:, None, None, None],
    )


def sample_tissue(
    tissue_flat: torch.Tensor,
    dims: torch.Tensor,
    corner: torch.Tensor,
    fx: torch.Tensor,
    fy: torch.Tensor,
    fz: torch.Tensor,
    table: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Trilinear tissue properties along every scan line.

    tissue_flat (V,) uint8 class labels of the bank; dims (N, 3); corner, fx, fy, fz
    (N, E, P, L) from `lookup_cells`; table (4, N, C) contiguous: impedance, attenuation, echo
    amplitude and scatterer density per environment and class.
    Returns impedance (MRayl), attenuation (dB/cm/MHz), echo amplitude and scatterer density,
    each (N, P, L), averaged over the elevation rays.
    """
    n, n_classes = table.shape[1], table.shape[2]
    s_i, s_j = cell_strides(dims, corner.dtype)
    row = (torch.arange(n, device=table.device, dtype=corner.dtype) * n_classes)[:, None, None, None]
    columns = [table[c].reshape(-1) for c in range(table.shape[0])]  # (N*C,) each
    props = [0.0] * len(columns)
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                w = (fx if dx else 1 - fx) * (fy if dy else 1 - fy) * (fz if dz else 1 - fz)
                cls = tissue_flat[corner + dx * s_i + dy * s_j + dz].to(corner.dtype) + row
                props = [acc + col[cls] * w for acc, col in zip(props, columns)]
    return tuple(v.mean(1) for v in props)


def speckle(
    tile: torch.Tensor, tile_origin: torch.Tensor, tile_dir: torch.Tensor, dist: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """In-phase and quadrature speckle (N, S, L) at each sample's nearest cell of the periodic tile.

    tile (T^3, 2) with T a power of two (`speckle.speckle_tile`); tile_origin (3, N, L) and
    tile_dir (3, N, L) are the central ray of each line in tile-cell units, one block per axis;
    dist (S,) metres.
    """
    cells = round(tile.shape[0] ** (1 / 3))
    mask = cells - 1  # power-of-two period: a bitwise and instead of an integer modulo
    d = dist[None, :, None]
    c = [(tile_origin[a][:, None] + tile_dir[a][:, None] * d).floor().to(torch.int32) & mask for a in range(3)]
    k = (c[0] * cells + c[1]) * cells + c[2]
    return tile[:, 0][k], tile[:, 1][k]


def along_lines(coarse: torch.Tensor, index: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Linear interpolation (N, P, L) -> (N, S, L) along the lines; index, weight (S,)."""
    return coarse[:, index] * (1 - weight)[None, :, None] + coarse[:, index + 1] * weight[None, :, None]


def coupling(
    z_coarse: torch.Tensor,
    prop_index: torch.Tensor,
    prop_weight: torch.Tensor,
    dist: torch.Tensor,
    contact_reach: torch.Tensor,
    n_head: int,
    tissue_min_mrayl: float,
) -> torch.Tensor:
    """Whether each line is coupled (N, 1, L): it meets tissue (impedance above
    `tissue_min_mrayl`) within its contact reach, the skin conforming to the pressed face.

    z_coarse (N, P, L) and prop_index/prop_weight (S,) as in `reflection`; dist (S,) metres;
    contact_reach (L,) metres along each line, reached within the first (static) n_head samples.
    """
    z_head = along_lines(z_coarse, prop_index[:n_head], prop_weight[:n_head])
    in_reach = dist[None, :n_head, None] <= contact_reach
    return ((z_head > tissue_min_mrayl) & in_reach).any(dim=1, keepdim=True)


def incidence(
    z_coarse: torch.Tensor,
    step_over_spacing: torch.Tensor,
    along_taps: torch.Tensor,
    across_taps: torch.Tensor,
    specular_power: float,
) -> torch.Tensor:
    """How strongly an interface at each tissue lookup echoes back for its angle (N, P, L):
    cos(theta)^specular_power, theta the in-plane angle between the beam and the impedance
    gradient (0: every angle alike); a tilted surface sends its echo past the aperture.

    z_coarse (N, P, L) impedance from `sample_tissue`; step_over_spacing (P,) the lookup step over
    the line spacing at each lookup; along_taps (K, P) and across_taps (J, P) Gaussian smoothing
    along and across the lines (each depth's taps sum to 1; `Renderer._orientation`): wider
    than a line spacing, so that an interface's shift from one line to the next stays within its
    smoothed width, where a difference of sharp edges would saturate, and than a voxel, so that a
    voxelised oblique surface's steps read as its tilt. Where there is no gradient, 1.
    """
    n_p, n_l = z_coarse.shape[1], z_coarse.shape[2]
    half = along_taps.shape[0] // 2
    padded = torch.cat([z_coarse[:, :1].expand(-1, half, -1), z_coarse, z_coarse[:, -1:].expand(-1, half, -1)], 1)
    smooth = sum(along_taps[k][None, :, None] * padded[:, k : k + n_p] for k in range(2 * half + 1))
    half = across_taps.shape[0] // 2
    padded = torch.cat([smooth[..., :1].expand(-1, -1, half), smooth, smooth[..., -1:].expand(-1, -1, half)], -1)
    smooth = sum(across_taps[k][None, :, None] * padded[..., k : k + n_l] for k in range(2 * half + 1))
    # central differences, in lookup steps along and (scaled to a lookup step) across the lines
    ends = torch.cat([smooth[:, :1], smooth, smooth[:, -1:]], 1)
    along = 0.5 * (ends[:, 2:] - ends[:, :-2])
    sides = torch.cat([smooth[..., :1], smooth, smooth[..., -1:]], -1)
    across = 0.5 * (sides[..., 2:] - sides[..., :-2]) * step_over_spacing[None, :, None]
    cos2 = (along * along + 1e-12) / (along * along + across * across + 1e-12)
    # cos^p as exp(p/2 ln cos^2): torch's pow rounds differently with the tensor's size, exp and ln
    # do not, so an environment renders the same in any batch
    return torch.exp(specular_power / 2 * torch.log(cos2))


def reflection(
    z_coarse: torch.Tensor,
    alpha_coarse: torch.Tensor,
    echo_coarse: torch.Tensor,
    density_coarse: torch.Tensor,
    prop_index: torch.Tensor,
    prop_weight: torch.Tensor,
    dist: torch.Tensor,
    frequency_mhz: torch.Tensor,
    contact_reach: torch.Tensor,
    angle_coarse: torch.Tensor,
    coupled: torch.Tensor,
    speckle_i: torch.Tensor,
    speckle_q: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reflection and loss per sample step, from the tissue along the lines.

    z/alpha/echo/density_coarse (N, P, L) from `sample_tissue`, interpolated to the S samples with
    prop_index and prop_weight (S,); dist (S,) metres; frequency_mhz (N,); contact_reach (L,)
    metres, how far along each line the contact reaches; angle_coarse (N, P, L) from `incidence`:
    what part of its normal-incidence amplitude an interface there echoes; coupled (N, 1, L) from
    `coupling`; speckle_i/q (N, S, L) from `speckle`: which cells scatter where the tissue's
    scatterers are sparse (`speckle.sparse_scatterers`).
    Returns, (N, S, L): the amplitude reflection coefficient r, the log round-trip amplitude change
    (transmission ln(1 - r^2) and attenuation), the scatterer amplitude (the tissue's echo
    amplitude, in sparse tissue only in the scattering cells, at the same mean power); and
    (N, S, 1) the soft-tissue attenuation per step averaged over the coupled lines, what
    `auto_tgc` compensates (bone and lung, above SOFT_TISSUE_MAX_DB_CM_MHZ, are not).
    """
    z_ac, alpha, echo, density = (
        along_lines(c, prop_index, prop_weight) for c in (z_coarse, alpha_coarse, echo_coarse, density_coarse)
    )
    # Near the face the skin conforms to the pressed probe and gel fills what air is left: within
    # each line's contact reach, air and air-dominated partial voxels become gel.
    in_reach = (dist[None, :, None] <= contact_reach).to(z_ac.dtype)  # (1, S, L); float: cheaper masks
    keep = 1.0 - in_reach * (z_ac < GEL_FILL_MRAYL).to(z_ac.dtype)
    z_ac = z_ac * keep + GEL_MRAYL * (1.0 - keep)
    alpha = alpha * keep
    echo = echo * keep * sparse_scatterers(speckle_i, speckle_q, density)
    angle = along_lines(angle_coarse, prop_index, prop_weight)
    r = torch.zeros_like(z_ac)
    r[:, 1:] = (z_ac[:, 1:] - z_ac[:, :-1]) / (z_ac[:, 1:] + z_ac[:, :-1]).clamp_min(1e-6) * angle[:, 1:]
    step_cm = torch.zeros_like(dist)
    step_cm[1:] = (dist[1:] - dist[:-1]) * 100.0
    attenuation = (2 / DB_PER_NEPER) * alpha * frequency_mhz[:, None, None] * step_cm[None, :, None]
    weight = coupled.to(alpha.dtype) * (alpha <= SOFT_TISSUE_MAX_DB_CM_MHZ).to(alpha.dtype)
    soft = (attenuation * weight).sum(-1, keepdim=True) / coupled.to(alpha.dtype).sum(-1, keepdim=True).clamp_min(1.0)
    return r, torch.log((1 - r * r).clamp_min(1e-12)) - attenuation, echo, soft


def lateral_taps(
    frequency_mhz: torch.Tensor,
    dist: torch.Tensor,
    line_spacing: torch.Tensor,
    focus_m: float,
    aperture_m: float,
    half: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The lateral point-spread function across lines, per environment and depth.

    frequency_mhz (N,); dist and line_spacing (S,) metres; focus_m, aperture_m the probe's
    (`probe.beam_fwhm_m`); half: taps either side (the kernel spans 2 half + 1 lines, its
    standard deviation at most half / 2 lines). Returns Gaussian taps (2 half + 1, N, S, 1) of
    unit sum (a laterally extended reflector keeps its amplitude) and their L2 norm (N, S, 1), by
    which speckle, uncorrelated from line to line, is divided to keep its mean power.
    """
    wavelength = SPEED_OF_SOUND_M_S / (frequency_mhz * 1e6)
    fwhm = beam_fwhm_m(dist[None, :], wavelength[:, None], focus_m, aperture_m)  # (N, S)
    sigma = (fwhm / (FWHM_PER_SIGMA * line_spacing[None, :])).clamp(1e-3, max(half, 1e-3) / 2)
    k = torch.arange(-half, half + 1, dtype=dist.dtype, device=dist.device)[:, None, None]
    taps = torch.exp(-0.5 * (k / sigma[None]) ** 2)
    # Sums over the taps as a fixed sequence of adds: torch's reductions order their partial sums by
    # the tensor's size, and an environment must render the same in any batch.
    taps = taps / sum(taps[i] for i in range(2 * half + 1))
    return taps[..., None], torch.sqrt(sum(taps[i] * taps[i] for i in range(2 * half + 1)))[..., None]


def echo_iq(
    r: torch.Tensor,
    log_loss: torch.Tensor,
    echo: torch.Tensor,
    coupled: torch.Tensor,
    speckle_i: torch.Tensor,
    speckle_q: torch.Tensor,
    psf: torch.Tensor,
    speckle_gain: float,
    lateral_norm: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Received echo of every line, in-phase and quadrature (N, S, L), in amplitude re a perfect
    mirror at the face: specular and speckle echoes through the axial PSF, dimmed by the path.

    r, log_loss, echo (N, S, L) from `reflection`; coupled (N, 1, L) from `coupling` (uncoupled
    lines are 0); speckle_i/q (N, S, L) from `speckle`; psf (K,) axial taps (odd K, peak 1: an
    interface echoes at its r); speckle_gain: 1 / the taps' L2 norm, so speckle keeps its power;
    lateral_norm (N, S, 1) from `lateral_taps`: the specular part is scaled by it, which
    `beam_level` divides out of the whole, so that only speckle is renormalised across lines.
    """
    half = psf.shape[0] // 2

    def axial(x: torch.Tensor) -> torch.Tensor:
        padded = torch.nn.functional.pad(x, (0, 0, half, half))
        return sum(psf[k] * padded[:, k : k + x.shape[1]] for k in range(psf.shape[0]))

    re = axial(r * lateral_norm + speckle_gain * echo * speckle_i)
    im = axial(speckle_gain * echo * speckle_q)
    # Exclusive: an echo is not dimmed by the interface it comes from (nor the last half step).
    path = torch.cumsum(log_loss, dim=1) - log_loss
    amplitude = torch.exp(path.clamp_min(-80.0)) * coupled.to(r.dtype)  # e^-80: 695 dB down, still a normal float
    return re * amplitude, im * amplitude


def beam_level(
    re: torch.Tensor, im: torch.Tensor, taps: torch.Tensor, lateral_norm: torch.Tensor, coupled: torch.Tensor
) -> torch.Tensor:
    """Echo level (N, S, L) in dB re a perfect mirror, before TGC and gain: the lines' echoes
    `echo_iq` through the lateral point-spread function `lateral_taps` (taps (K, N, S, 1),
    lateral_norm (N, S, 1)); the outermost lines are repeated beyond the edges. coupled (N, 1, L):
    uncoupled lines stay dark."""
    half = taps.shape[0] // 2
    width = re.shape[-1]

    def across(x: torch.Tensor) -> torch.Tensor:
        padded = torch.cat([x[..., :1].expand(*x.shape[:-1], half), x, x[..., -1:].expand(*x.shape[:-1], half)], -1)
        return sum(taps[k] * padded[..., k : k + width] for k in range(taps.shape[0]))

    re_l, im_l = across(re), across(im)
    power = torch.where(coupled, (re_l * re_l + im_l * im_l) / (lateral_norm * lateral_norm), 0.0)
    return (DB_PER_NEPER / 2) * torch.log(power.clamp_min(1e-30))


def tool_echo_iq(
    r: torch.Tensor,
    log_loss: torch.Tensor,
    echo: torch.Tensor,
    coupled: torch.Tensor,
    speckle_i: torch.Tensor,
    speckle_q: torch.Tensor,
    psf: torch.Tensor,
    speckle_gain: float,
    lateral_norm: torch.Tensor,
    hit_sample: torch.Tensor,
    tool_reflection: float,
    tool_log_transmission: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`echo_iq` with a metal tool on the lines: a specular reflector where each line meets the
    tool's front wall, and a shadow behind it. Only renders with a tool take this path.

    r ... lateral_norm as in `echo_iq`; hit_sample (N, 1, L) the
    fractional sample index of each line's hit (`tools.shaft_depth` over the sample spacing;
    inf where the line misses the tool); tool_reflection the wall's amplitude reflection
    coefficient; tool_log_transmission the log round-trip amplitude behind the tool (nepers).
    Returns (N, S, L) in-phase and quadrature echoes.
    """
    samples = torch.arange(r.shape[1], dtype=r.dtype, device=r.device)[None, :, None]
    # The hit is shared by the two samples around it (weights summing to 1), so the reflector and
    # its shadow move smoothly with the tool, as trilinear tissue interfaces do; the axial PSF
    # then gives the reflector the thickness of any interface, about half a pulse.
    weight = (1.0 - (samples - hit_sample).abs()).clamp_min(0.0)
    r = r + weight * (tool_reflection - r)  # the metal wall replaces whatever tissue interface was there
    # The loss is booked one sample later: a wall that strong (-35 dB) would otherwise dim its own
    # echo on the second of its two samples (the path to a sample includes the steps before it).
    behind = (1.0 - (samples - 1.0 - hit_sample).abs()).clamp_min(0.0)
    log_loss = log_loss + behind * tool_log_transmission
    return echo_iq(r, log_loss, echo, coupled, speckle_i, speckle_q, psf, speckle_gain, lateral_norm)


def auto_tgc(soft_loss: torch.Tensor) -> torch.Tensor:
    """Automatic time-gain compensation (N, S, 1) in dB: at each depth, the soft-tissue attenuation
    on the way there and back, averaged over the coupled lines (soft_loss (N, S, 1) from
    `reflection`, nepers lost per step). Like a sonographer's TGC sliders it is one gain per
    depth, so homogeneous tissue of any attenuation comes out level while a structure that
    attenuates more or less than its neighbours still shadows or enhances what lies behind it."""
    return DB_PER_NEPER * (torch.cumsum(soft_loss, dim=1) - soft_loss)  # exclusive, as the echo's own path


def slope_tgc(dist: torch.Tensor, frequency_mhz: torch.Tensor, tgc_db_cm_mhz: float) -> torch.Tensor:
    """Fixed time-gain compensation (N, S, 1) in dB: the round trip through tissue attenuating
    tgc_db_cm_mhz, at each environment's frequency (frequency_mhz (N,)); dist (S,) metres."""
    return 2 * tgc_db_cm_mhz * frequency_mhz[:, None, None] * (dist * 100.0)[None, :, None]


def compress(
    level_db: torch.Tensor, tgc_db: torch.Tensor, gain_db: torch.Tensor, dynamic_range_db: torch.Tensor
) -> torch.Tensor:
    """TGC, gain and log compression over the dynamic range to [0, 1].

    level_db (N, S, L); tgc_db (N, S, 1) from `auto_tgc` or `slope_tgc`; gain_db, dynamic_range_db
    (N,). Returns (N, S, L).
    """
    db = level_db + tgc_db + gain_db[:, None, None]
    return ((db + dynamic_range_db[:, None, None]) / dynamic_range_db[:, None, None]).clamp(0, 1)


def beam_image(
    re: torch.Tensor,
    im: torch.Tensor,
    taps: torch.Tensor,
    lateral_norm: torch.Tensor,
    coupled: torch.Tensor,
    tgc_db: torch.Tensor,
    gain_db: torch.Tensor,
    dynamic_range_db: torch.Tensor,
) -> torch.Tensor:
    """`beam_level` then `compress`, in one stage (one pass less through memory): the (N, S, L)
    image in [0, 1] on the (sample, line) grid."""
    return compress(beam_level(re, im, taps, lateral_norm, coupled), tgc_db, gain_db, dynamic_range_db)


def scan_convert(
    lines: torch.Tensor, index: torch.Tensor, weight: torch.Tensor, pixels: torch.Tensor, image_hw: tuple[int, int]
) -> torch.Tensor:
    """Bilinear resampling of the (sample, line) grid (N, S, L) to the image (N, H, W).

    index (C, M) flat (sample, line) corners and weight (C, M) their bilinear weights, one
    contiguous row per corner, for the M output pixels `pixels` (M,) inside the field of view;
    the other pixels are 0.
    """
    n = lines.shape[0]
    flat = lines.reshape(n, -1)
    values = sum(flat[:, index[c]] * weight[c] for c in range(index.shape[0]))
    if pixels.shape[0] == image_hw[0] * image_hw[1]:  # every pixel inside (linear probes)
        return values.reshape(n, *image_hw)
    out = values.new_zeros(n, image_hw[0] * image_hw[1])
    out[:, pixels] = values
    return out.reshape(n, *image_hw)
