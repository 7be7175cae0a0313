"""Batched B-mode ultrasound: probe poses (N, 7) and patient indices (N,) to images (N, H, W).

The physics, per scan line of every environment, all batched (no loop over environments,
patients or tissue classes):

1. Tissue properties along the line by trilinear interpolation of the patient's property
   volumes. Each volume is the patient's tissue-class volume seen through a per-environment
   `TissueTable` row, so a lookup interpolates table[class] over the 8 voxel corners; this
   equals sampling float property volumes while storing one byte per voxel and letting each
   environment randomise its tissue parameters for free.
2. Specular reflection at impedance jumps: amplitude r = (Z2 - Z1) / (Z2 + Z1) per sample step,
   times cos(theta)^specular_power for an interface tilted by theta from the beam in the image
   plane (a tilted surface sends its echo past the aperture).
3. Transmission loss: the round-trip amplitude behind an interface is scaled by (1 - R), R = r^2,
   so bone and air cast shadows.
4. Attenuation: round trip 2 * alpha * f * depth dB, alpha proportional to frequency.
5. Speckle: a complex Gaussian scatterer field fixed in the patient frame (`speckle.py`), scaled
   by the tissue's echogenicity, added coherently to the specular echo.
   The point-spread function: the complex echo passes the axial PSF (a Gaussian set by the pulse
   length) along each line and the lateral PSF across lines (a Gaussian of the two-way beam
   width at each depth, `probe.beam_fwhm_m`: aperture, focus and each environment's
   frequency), so speckle grains take the beam's size; the envelope is the magnitude.
6. Coupling: the skin conforms to the pressed face, so within a short reach past the face air
   becomes gel; lines that meet no tissue within that reach (probe lifted off) go dark.
7. Time-gain compensation (by default automatic: one gain per depth that levels the soft
   tissue the lines pass, `stages.auto_tgc`), gain, log compression over a dynamic range to
   [0, 1], and scan conversion of sector (convex, phased) images.

Optionally a straight metal tool per environment (`tools.ToolSegments`, e.g. the drill): each
line that meets its shaft within the imaged slab echoes from its front wall almost as from a
mirror, and the tissue behind it lies in its shadow (`tools.py`, `stages.tool_echo_iq`).

The path loss (transmission and attenuation) accumulates in the log domain, one cumulative sum;
the echoes pass the PSFs as complex amplitudes and are compressed from dB. The stages are pure
tensor functions in `stages.py`; `torch.compile` fuses each into a few loops on CPU and kernels
on CUDA (`RendererConfig.compile`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Mapping

import torch

from sim.anatomy.bank import PatientBank
from sim.anatomy.tissues import TISSUE_CLASSES
from sim.config import build
from sim.errors import InputError, require, require_int, require_number
from sim.memory import keep_freed_memory
from sim.transforms import check_poses
from sim.ultrasound.probe import ProbeSpec
from sim.ultrasound.speckle import speckle_tile
from sim.ultrasound.stages import (
    FWHM_PER_SIGMA,
    auto_tgc,
    beam_image,
    beam_level,
    coupling,
    echo_iq,
    incidence,
    lateral_taps,
    line_geometry,
    lookup_cells,
    reflection,
    sample_tissue,
    scan_convert,
    slope_tgc,
    speckle,
    tool_echo_iq,
)
from sim.ultrasound.tissue import TissueTable
from sim.ultrasound.tools import TOOL_LOG_TRANSMISSION, TOOL_REFLECTION, ToolSegments, shaft_depth

RANDOMIZATION_KEYS = (
    "gain_db",
    "dynamic_range_db",
    "frequency_scale",
    "impedance_scale",
    "attenuation_scale",
    "echogenicity_db",
)
ORIENTATION_MAX_TAPS = 16  # taps either side of the smoothing under which interface tilts are read
MAX_LATERAL_HALF = 32  # the lateral PSF spans at most 65 lines
QUATERNION_NORM_TOL = 1e-3  # poses whose quaternion norm is further than this from 1 are refused


@dataclass
class RendererConfig:
    """Renderer settings (Hydra: `renderer.*`).

    tgc_db_cm_mhz: None (the default): automatic time-gain compensation, levelling at each
        depth the mean soft-tissue attenuation of the lines (`stages.auto_tgc`); a number: a
        fixed slope compensating that attenuation round trip (0 turns TGC off).
        gain_db, dynamic_range_db: display mapping; 0 dB is a perfect mirror.
    tissue_min_mrayl: impedance above which a sample counts as tissue for coupling.
    conform_m: how far past its face a scan line may first meet tissue and still be coupled (the
        skin conforms to the pressed face; convex faces add their own curvature to it).
    speckle_cells, speckle_pitch_m, speckle_sigma_cells, speckle_seed: the scatterer tile, a
        power-of-two number of cells per axis (pitch None: the axial sample spacing; sigma 0: white
        scatterers, whose grain the PSFs set and whose power their normalisation keeps; above 0
        the cells correlate and speckle comes out brighter than its echogenicity); 64 cells of 8
        bytes stay in cache.
    specular_power: an interface echoes with cos(theta)^specular_power of its amplitude at normal
        incidence, theta the angle between the beam and its normal (0: independent of angle).
    property_step_m: spacing of the tissue lookups along a line, rounded to whole samples
        (None: 1.25 times the finest voxel size in the bank); samples between are interpolated.
    randomization: per-environment ranges for `Renderer.sample_params` (uniform):
        gain_db and echogenicity_db are additive, the *_scale entries multiplicative.
    chunk_samples: at most this many samples (environments x lines x samples per line) are in
        flight at once; larger batches run in equal chunks, bounding memory.
    compile: fuse the pipeline with torch.compile (first call compiles, about a minute on CPU).
    """

    tgc_db_cm_mhz: float | None = None
    gain_db: float = 6.0
    dynamic_range_db: float = 60.0
    tissue_min_mrayl: float = 0.5
    conform_m: float = 0.002
    speckle_cells: int = 64
    speckle_pitch_m: float | None = None
    speckle_sigma_cells: float = 0.0
    specular_power: float = 2.0
    speckle_seed: int = 0
    property_step_m: float | None = None
    randomization: dict = field(
        default_factory=lambda: {
            "gain_db": (-6.0, 6.0),
            "dynamic_range_db": (50.0, 70.0),
            "frequency_scale": (0.85, 1.15),
            "impedance_scale": (0.95, 1.05),
            "attenuation_scale": (0.7, 1.3),
            "echogenicity_db": (-4.0, 4.0),
        }
    )
    chunk_samples: int = 8_000_000
    compile: bool = False

    def __post_init__(self) -> None:
        """Refuse settings that would turn every image into NaN or nonsense (InputError naming the setting)."""
        if self.tgc_db_cm_mhz is not None:
            require_number(self.tgc_db_cm_mhz, "renderer tgc_db_cm_mhz", 0.0)
        require_number(self.gain_db, "renderer gain_db", -math.inf)
        require_number(self.dynamic_range_db, "renderer dynamic_range_db", 0.0, low_open=True)
        require_number(self.tissue_min_mrayl, "renderer tissue_min_mrayl", 0.0)
        require_number(self.conform_m, "renderer conform_m", 0.0)
        require_number(self.specular_power, "renderer specular_power", 0.0)
        require_number(self.speckle_sigma_cells, "renderer speckle_sigma_cells", 0.0)
        for key in ("speckle_pitch_m", "property_step_m"):
            if getattr(self, key) is not None:
                require_number(getattr(self, key), f"renderer {key}", 0.0, low_open=True)
        require_int(self.chunk_samples, "renderer chunk_samples", 1)
        unknown = sorted(set(self.randomization) - set(RANDOMIZATION_KEYS))
        if unknown:
            raise InputError(f"renderer.randomization keys {unknown}: expected keys among {sorted(RANDOMIZATION_KEYS)}")
        for key, bounds in self.randomization.items():
            what = f"renderer.randomization.{key}"
            require(isinstance(bounds, (list, tuple)) and len(bounds) == 2, what, "a range [low, high]", repr(bounds))
            # Scales multiply and the dynamic range divides: their ranges must stay positive.
            positive = key.endswith("_scale") or key == "dynamic_range_db"
            low = require_number(bounds[0], f"{what}[0]", 0.0 if positive else -math.inf, low_open=positive)
            require_number(bounds[1], f"{what}[1]", low)
        # Ranges as tuples, however they came (YAML and Hydra give lists), so equal settings compare equal.
        self.randomization = {key: tuple(bounds) for key, bounds in self.randomization.items()}

    @classmethod
    def from_dict(cls, cfg: Mapping) -> "RendererConfig":
        """Settings from a mapping; defaults for what it leaves out, unknown keys refused (InputError)."""
        return build(cls, cfg, "renderer config")


@dataclass
class RenderParams:
    """Per-environment imaging parameters (N = environments).

    gain_db, dynamic_range_db, frequency_mhz: (N,). tissue: (N, C, 4) rows of
    `TissueTable.as_tensor()` (impedance MRayl, attenuation dB/cm/MHz, echo amplitude, scatterer
    density). speckle_offset: (N, 3) shift of the scatterer tile in tile cells, one speckle
    realisation per row (fixed in the patient frame while it is kept); None: each patient's own.
    """

    gain_db: torch.Tensor
    dynamic_range_db: torch.Tensor
    frequency_mhz: torch.Tensor
    tissue: torch.Tensor
    speckle_offset: torch.Tensor | None = None

    def check(self, n: int, classes: int) -> None:
        """InputError naming the first parameter that is not a finite tensor of its shape and range."""
        shapes = {"gain_db": (n,), "dynamic_range_db": (n,), "frequency_mhz": (n,), "tissue": (n, classes, 4)}
        if self.speckle_offset is not None:
            shapes["speckle_offset"] = (n, 3)
        for name, shape in shapes.items():
            value = getattr(self, name)
            require(
                isinstance(value, torch.Tensor) and value.shape == shape,
                f"params.{name}",
                f"a tensor of shape {shape}",
                tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__,
            )
            require(bool(torch.isfinite(value).all()), f"params.{name}", "finite values", "NaN or infinity")
        require(
            bool((self.dynamic_range_db > 0).all()),
            "params.dynamic_range_db",
            "values > 0 dB",
            self.dynamic_range_db.min().item(),
        )
        require(
            bool((self.frequency_mhz > 0).all()),
            "params.frequency_mhz",
            "values > 0 MHz",
            self.frequency_mhz.min().item(),
        )
        require(
            bool((self.tissue[..., 0] > 0).all()),
            "params.tissue[..., 0] (impedance)",
            "values > 0 MRayl",
            self.tissue[..., 0].min().item(),
        )
        require(
            bool((self.tissue[..., 1:3] >= 0).all()),
            "params.tissue[..., 1:3] (attenuation, echo)",
            "values >= 0",
            self.tissue[..., 1:3].min().item(),
        )
        density = self.tissue[..., 3]
        require(
            bool(((density > 0) & (density <= 1)).all()),
            "params.tissue[..., 3] (scatterer density)",
            "values in (0, 1]",
            density.min().item() if bool((density <= 0).any()) else density.max().item(),
        )


def render_inputs(
    bank: PatientBank, poses: torch.Tensor, patient_idx: torch.Tensor, check: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Poses (N, 7) as float32 and patient indices (N,) as int64 on the bank's device.

    With `check`, InputError unless poses are finite with unit quaternions (within
    `QUATERNION_NORM_TOL`) and indices an integer tensor (a float tensor is refused, not
    truncated) of patients in the bank. The checks read values back to the host (a
    synchronisation on CUDA), so the environments, whose inputs come from their own state,
    render with check=False."""
    if not check:
        return poses.to(bank.device, torch.float32), patient_idx.to(bank.device, torch.int64)
    require(isinstance(poses, torch.Tensor), "poses", "a torch.Tensor of shape (N, 7)", type(poses).__name__)
    check_poses(poses)
    norm_error = (poses[:, 3:].double().norm(dim=-1) - 1).abs()
    if len(poses) and norm_error.max() > QUATERNION_NORM_TOL:
        i = int(norm_error.argmax())
        norm = poses[i, 3:].double().norm().item()
        raise InputError(
            f"poses[{i}]: expected a unit quaternion (w, x, y, z; "
            f"norm within {QUATERNION_NORM_TOL} of 1), got norm {norm:.6g}"
        )
    require(
        isinstance(patient_idx, torch.Tensor),
        "patient_idx",
        "a torch.Tensor of int64 patient indices",
        type(patient_idx).__name__,
    )
    integer = not (patient_idx.is_floating_point() or patient_idx.is_complex() or patient_idx.dtype == torch.bool)
    require(integer, "patient_idx", "an integer tensor (int64 patient indices)", f"dtype {patient_idx.dtype}")
    return poses.to(bank.device, torch.float32), bank.check_index(patient_idx, poses.shape[0])


class Renderer:
    """Renders B-mode images for many environments at once, on the bank's device.

    `render(poses, patient_idx, params=None)`: poses (N, 7) probe-face poses in the patient frame
    (metres, quaternion w, x, y, z), patient_idx (N,) int64 -> (N, H, W) float32 in [0, 1].
    """

    def __init__(
        self,
        bank: PatientBank,
        probe: ProbeSpec,
        tissue: TissueTable | None = None,
        config: RendererConfig | None = None,
    ) -> None:
        self.bank, self.probe = bank, probe
        self.config = config or RendererConfig()
        self.tissue = tissue or TissueTable.load()
        dev = bank.device
        self.device = dev
        self.base_table = self.tissue.as_tensor(dev)
        self.index_dtype = torch.int32 if bank.tissue_flat.numel() < 2**31 - 1 else torch.int64
        self.origins, self.dirs, self.dist = probe.scan_lines(dev)
        self.psf = self._axial_psf().to(dev)
        self.speckle_gain = float(1 / self.psf.square().sum().sqrt())
        self.line_spacing = probe.line_spacing_m(self.dist)
        self.lateral_half = self._lateral_half()
        cfg = self.config
        self.speckle_pitch_m = cfg.speckle_pitch_m or probe.sample_spacing_m
        if cfg.speckle_cells < 8 or cfg.speckle_cells & (cfg.speckle_cells - 1):
            raise InputError(f"renderer speckle_cells: expected a power of two >= 8, got {cfg.speckle_cells}")
        self.tile = speckle_tile(cfg.speckle_cells, cfg.speckle_sigma_cells, cfg.speckle_seed, dev)
        self.prop_dist, self.prop_index, self.prop_weight = self._property_samples()
        self.elevation = probe.elevation_offsets(self.prop_dist)  # (E, P) at the tissue lookups
        self.orientation = self._orientation()
        # Each patient sees the tile shifted by its own offset (cells), so patients differ.
        g = torch.Generator().manual_seed(cfg.speckle_seed + 1)
        self.patient_tile_offset = (torch.rand(len(bank), 3, generator=g) * cfg.speckle_cells).to(dev)
        self.scan_tables = self._scan_conversion()
        # A line is coupled if it meets tissue within conform_m past the lowest point of the face.
        sagitta = self.origins[:, 2].max() - self.origins[:, 2]
        self.contact_reach = cfg.conform_m + sagitta  # (L,) metres along each line
        self.n_head = int((self.dist <= self.contact_reach.max()).sum())  # samples that can be in reach
        # Each stage is compiled on its own: its outputs are materialised, which keeps the
        # scans (cumulative sums), reductions and the axial filter from recomputing the lookups.
        # The tool's stages are compiled (lazily, like the others) only once a render brings a tool.
        stages = (line_geometry, lookup_cells, sample_tissue, speckle, coupling, incidence, reflection, lateral_taps,
                  echo_iq, beam_level, beam_image, scan_convert, shaft_depth, tool_echo_iq)  # fmt: skip
        if cfg.compile:
            # Indices are clamped into the bank by construction; skip inductor's per-load checks.
            # A per-compile option, so inductor's process-wide config stays as it was.
            stages = tuple(torch.compile(f, dynamic=False, options={"assert_indirect_indexing": False}) for f in stages)
        (
            self._line_geometry, self._lookup_cells, self._sample_tissue, self._speckle, self._coupling,
            self._incidence, self._reflection, self._lateral_taps, self._echo_iq, self._beam_level, self._beam_image,
            self._scan_convert, self._shaft_depth, self._tool_echo_iq,
        ) = stages  # fmt: skip
        keep_freed_memory()  # renders free and reallocate the same large blocks: glibc keeps them (sim.memory)

    # -- set-up helpers

    def _axial_sigma_samples(self) -> float:
        """The axial PSF's standard deviation in samples: FWHM = half the pulse length, at least one
        sample, so that an interface which trilinear sampling splits over two sample steps still
        echoes at nearly its full amplitude (within 12 %), and its brightness does not flicker as
        the probe moves by sub-sample amounts."""
        fwhm = self.probe.pulse_cycles * self.probe.wavelength_m / 2
        return max(fwhm / FWHM_PER_SIGMA / self.probe.sample_spacing_m, 1.0)

    def _axial_psf(self) -> torch.Tensor:
        """Gaussian axial PSF taps (peak 1) of `_axial_sigma_samples`, to 2 sigma (about 1 % beyond)."""
        sigma = self._axial_sigma_samples()
        half = max(1, math.ceil(2 * sigma))
        k = torch.arange(-half, half + 1, dtype=torch.float32)
        return torch.exp(-0.5 * (k / sigma) ** 2)

    def _lateral_half(self) -> int:
        """Taps either side of the lateral PSF: two standard deviations of the widest beam (in
        lines) at the lowest randomised frequency, at most MAX_LATERAL_HALF. The first tenth of the
        depth does not count: near a phased sector's apex the lines crowd together, and there they
        share a beam of the largest width the kernel has."""
        p = self.probe
        low = self.config.randomization.get("frequency_scale", (1.0, 1.0))[0]
        fwhm = p.lateral_fwhm_m(self.dist.double(), p.frequency_mhz * min(low, 1.0))
        sigma = fwhm / (FWHM_PER_SIGMA * self.line_spacing.double())
        return min(math.ceil(2 * float(sigma[self.dist >= 0.1 * p.depth_m].max())), MAX_LATERAL_HALF)

    def _orientation(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`stages.incidence`'s inputs at the tissue lookups: the lookup step over the line spacing
        (P,), and Gaussian taps along the lines (K, P) and across them (J, P), each depth's of unit
        sum: the smoothing under which it reads an interface's tilt. Its standard deviation is 1.5
        line spacings, so that an interface's shift from one line to the next stays within its
        smoothed width (within 5 % of cos^2 at 40 degrees), and at least one voxel, so that the
        steps of a voxelised oblique surface read as the surface's own tilt; at most
        ORIENTATION_MAX_TAPS either side, and along the lines at least one lookup step."""
        voxel = float(min(pt.spacing.min() for pt in self.bank.patients))
        spacing = self.probe.line_spacing_m(self.prop_dist)
        step = float(self.prop_dist[1] - self.prop_dist[0]) if len(self.prop_dist) > 1 else self.probe.depth_m
        sigma = torch.clamp(1.5 * spacing, min=voxel)  # (P,) metres

        def taps(sigma_units: torch.Tensor) -> torch.Tensor:
            sigma_units = sigma_units.clamp(max=ORIENTATION_MAX_TAPS / 2)
            half = math.ceil(2 * float(sigma_units.max()))
            k = torch.arange(-half, half + 1, dtype=torch.float32, device=self.device)[:, None]
            weights = torch.exp(-0.5 * (k / sigma_units[None].clamp_min(1e-3)) ** 2)
            return (weights / weights.sum(0, keepdim=True)).contiguous()

        return step / spacing, taps((sigma / step).clamp(min=1.0)), taps(sigma / spacing)

    def _property_samples(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Distances (P,) where tissue is sampled, and the (S,) index and weight that
        interpolate them to every sample.

        Trilinear tissue is piecewise linear within a voxel, so sampling it every `k` samples,
        about a voxel apart, loses little and divides the cost of the 8-corner lookups by k.
        """
        p, cfg = self.probe, self.config
        step = cfg.property_step_m or 1.25 * float(min(pt.spacing.min() for pt in self.bank.patients))
        k = max(1, round(step / p.sample_spacing_m))
        n_prop = -(-(p.n_samples - 1) // k) + 1
        prop_dist = torch.clamp(torch.arange(n_prop) * k * p.sample_spacing_m, max=p.depth_m)
        pos = torch.arange(p.n_samples, dtype=torch.float64) / k
        index = pos.floor().long().clamp(max=n_prop - 2)
        weight = (pos - index) * (k * p.sample_spacing_m) / (prop_dist[index + 1] - prop_dist[index]).double()
        return prop_dist.float().to(self.device), index.to(self.device), weight.float().to(self.device)

    def _scan_conversion(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """Bilinear scan-conversion tables: (C, M) flat (sample, line) corner indices, (C, M)
        weights and (M,) the output pixels they fill (pixels outside the field of view stay 0).

        Only the M pixels inside the field of view are computed, and only the C <= 4 corners
        with a non-zero weight somewhere (two when image rows fall on samples). None when the
        (sample, line) grid already is the image.
        """
        p = self.probe
        if p.kind == "linear" and p.n_lines == p.image_width and p.n_samples == p.image_height:
            return None
        coords, inside = p.scan_coordinates()
        pixels = inside.reshape(-1).nonzero()[:, 0]
        s, ln = coords.reshape(-1, 2)[pixels].unbind(-1)
        s0 = s.floor().clamp(max=p.n_samples - 2)
        l0 = ln.floor().clamp(max=p.n_lines - 2)
        fs, fl = s - s0, ln - l0
        s0, l0 = s0.long(), l0.long()
        L = p.n_lines
        index = torch.stack([s0 * L + l0, s0 * L + l0 + 1, (s0 + 1) * L + l0, (s0 + 1) * L + l0 + 1])
        weight = torch.stack([(1 - fs) * (1 - fl), (1 - fs) * fl, fs * (1 - fl), fs * fl])
        used = weight.abs().amax(dim=1) > 1e-9
        index_t = torch.int32 if p.n_lines * p.n_samples < 2**31 else torch.int64
        return (
            index[used].contiguous().to(self.device, index_t),
            weight[used].contiguous().float().to(self.device),
            pixels.to(self.device, index_t),
        )

    # -- parameters

    def default_params(self, n: int) -> RenderParams:
        """Nominal parameters for n environments."""
        cfg, dev = self.config, self.device
        return RenderParams(
            gain_db=torch.full((n,), cfg.gain_db, device=dev),
            dynamic_range_db=torch.full((n,), cfg.dynamic_range_db, device=dev),
            frequency_mhz=torch.full((n,), self.probe.frequency_mhz, device=dev),
            tissue=self.base_table.expand(n, -1, -1),
        )

    def sample_params(self, n: int, generator: torch.Generator | None = None) -> RenderParams:
        """Domain-randomised parameters: each environment draws from `config.randomization`, and
        its own speckle realisation (a uniform tile offset)."""
        ranges = self.config.randomization  # keys and ranges checked by RendererConfig

        def uniform(lo: float, hi: float, shape: tuple[int, ...]) -> torch.Tensor:
            u = torch.rand(shape, generator=generator, device=generator.device if generator else "cpu")
            return (lo + (hi - lo) * u).to(self.device)

        def draw(key: str, neutral: float, shape: tuple[int, ...] = (n,)) -> torch.Tensor:
            return uniform(*ranges.get(key, (neutral, neutral)), shape)

        base = self.default_params(n)
        c = len(TISSUE_CLASSES)
        tissue = base.tissue.clone()
        tissue[..., 0] *= draw("impedance_scale", 1.0, (n, c))
        tissue[..., 1] *= draw("attenuation_scale", 1.0, (n, c))
        tissue[..., 2] *= 10 ** (draw("echogenicity_db", 0.0, (n, c)) / 20)
        return RenderParams(
            gain_db=base.gain_db + draw("gain_db", 0.0),
            dynamic_range_db=draw("dynamic_range_db", self.config.dynamic_range_db),
            frequency_mhz=base.frequency_mhz * draw("frequency_scale", 1.0),
            tissue=tissue,
            # A speckle realisation of its own: the tile shifted anywhere (it wraps).
            speckle_offset=uniform(0.0, float(self.config.speckle_cells), (n, 3)),
        )

    # -- rendering

    def _inputs(
        self,
        poses: torch.Tensor,
        patient_idx: torch.Tensor,
        params: RenderParams | None,
        check: bool,
        tools: ToolSegments | None = None,
    ) -> tuple:
        """(poses, patient_idx, params, tool) ready to render; validated (see `render_inputs`,
        `RenderParams.check` and `ToolSegments.check`) when `check`, only converted otherwise.
        tool: () without tools, else the (start, end, radius) tensors of `ToolSegments.tensors`."""
        poses, patient_idx = render_inputs(self.bank, poses, patient_idx, check)
        n = poses.shape[0]
        if params is None:
            params = self.default_params(n)
        elif check:
            params.check(n, len(TISSUE_CLASSES))
        if tools is None:
            return poses, patient_idx, params, ()
        if check:
            require(isinstance(tools, ToolSegments), "tools", "a ToolSegments or None", type(tools).__name__)
            tools.check(n)
        return poses, patient_idx, params, tools.tensors(n, self.device)

    def _tile_offset(self, params: RenderParams, patient_idx: torch.Tensor) -> torch.Tensor:
        """(N, 3) speckle tile offsets, cells: the params' realisations, else each patient's own."""
        return self.patient_tile_offset[patient_idx] if params.speckle_offset is None else params.speckle_offset

    def _lines(self, poses, patient_idx, tile_offset, frequency_mhz, tissue, *tool):
        line_origin, line_dir, elevation_dir, tile_origin, tile_dir = self._line_geometry(
            poses,
            self.bank.patient_to_voxel[patient_idx],
            tile_offset,
            self.origins,
            self.dirs,
            self.speckle_pitch_m,
        )
        dims = self.bank.dims[patient_idx]
        cells = self._lookup_cells(
            self.bank.offsets[patient_idx], dims, line_origin, line_dir, elevation_dir, self.elevation,
            self.prop_dist, self.index_dtype,
        )  # fmt: skip
        coarse = self._sample_tissue(self.bank.tissue_flat, dims, *cells, tissue.permute(2, 0, 1).contiguous())
        coupled = self._coupling(
            coarse[0], self.prop_index, self.prop_weight, self.dist, self.contact_reach, self.n_head,
            self.config.tissue_min_mrayl,
        )  # fmt: skip
        speckle_i, speckle_q = self._speckle(self.tile, tile_origin, tile_dir, self.dist)
        r, log_loss, scatter, soft_loss = self._reflection(
            *coarse, self.prop_index, self.prop_weight, self.dist, frequency_mhz, self.contact_reach,
            self._incidence(coarse[0], *self.orientation, self.config.specular_power), coupled, speckle_i, speckle_q,
        )  # fmt: skip
        p = self.probe
        taps, norm = self._lateral_taps(
            frequency_mhz, self.dist, self.line_spacing, p.focal_depth_m, p.aperture_m, self.lateral_half
        )
        echo = (r, log_loss, scatter, coupled, speckle_i, speckle_q, self.psf, self.speckle_gain, norm)
        if not tool:
            re, im = self._echo_iq(*echo)
        else:
            depth = self._shaft_depth(poses, *tool, self.origins, self.dirs, p.elevation_m / 2, p.depth_m)
            re, im = self._tool_echo_iq(
                *echo, (depth / p.sample_spacing_m)[:, None], TOOL_REFLECTION, TOOL_LOG_TRANSMISSION
            )
        slope = self.config.tgc_db_cm_mhz
        tgc = auto_tgc(soft_loss) if slope is None else slope_tgc(self.dist, frequency_mhz, slope)
        return re, im, taps, norm, coupled, tgc

    def _level(self, *inputs) -> torch.Tensor:
        return self._beam_level(*self._lines(*inputs)[:5])

    def _image(self, poses, patient_idx, tile_offset, frequency_mhz, tissue, gain_db, dynamic_range_db, *tool):
        lines = self._lines(poses, patient_idx, tile_offset, frequency_mhz, tissue, *tool)
        hw = (self.probe.image_height, self.probe.image_width)
        img = self._beam_image(*lines, gain_db, dynamic_range_db)
        if self.scan_tables is None:
            return img
        return self._scan_convert(img, *self.scan_tables, hw)

    def _chunked(self, fn, *per_env: torch.Tensor) -> torch.Tensor:
        """Run `fn` over equal chunks of environments (padding the last), bounding memory.

        Equal chunk sizes keep one compiled kernel per batch size.
        """
        n = per_env[0].shape[0]
        if n == 0:  # an empty batch: no chunks, but the output's shape
            return fn(*per_env)
        per_chunk = max(1, self.config.chunk_samples // (self.probe.n_lines * self.probe.n_samples))
        chunks = -(-n // per_chunk)
        size = -(-n // chunks)
        if chunks == 1:
            return fn(*per_env)
        pad = chunks * size - n
        padded = [torch.cat([t, t[-1:].expand(pad, *t.shape[1:])]) if pad else t for t in per_env]
        out = torch.cat([fn(*(t[i * size : (i + 1) * size] for t in padded)) for i in range(chunks)])
        return out[:n]

    @torch.no_grad()
    def render_lines(
        self,
        poses: torch.Tensor,
        patient_idx: torch.Tensor,
        params: RenderParams | None = None,
        check: bool = True,
        tools: ToolSegments | None = None,
    ) -> torch.Tensor:
        """Echo level (N, S, L) in dB re a perfect mirror, before TGC, gain and compression.

        check, tools: see `render`."""
        poses, patient_idx, params, tool = self._inputs(poses, patient_idx, params, check, tools)
        tile = self._tile_offset(params, patient_idx)
        return self._chunked(self._level, poses, patient_idx, tile, params.frequency_mhz, params.tissue, *tool)

    @torch.no_grad()
    def render(
        self,
        poses: torch.Tensor,
        patient_idx: torch.Tensor,
        params: RenderParams | None = None,
        check: bool = True,
        tools: ToolSegments | None = None,
    ) -> torch.Tensor:
        """B-mode images (N, H, W) in [0, 1]; N = 0 gives an empty (0, H, W) batch.

        check=False skips the input checks and their host synchronisation, for callers whose
        inputs are valid by construction (an environment's own poses, indices and parameters).
        tools: a metal shaft per environment (`ToolSegments`, patient frame) drawn where it
        crosses the imaged slab; None (the default) renders exactly as without them."""
        poses, patient_idx, params, tool = self._inputs(poses, patient_idx, params, check, tools)
        return self._chunked(
            self._image,
            poses,
            patient_idx,
            self._tile_offset(params, patient_idx),
            params.frequency_mhz,
            params.tissue,
            params.gain_db,
            params.dynamic_range_db,
            *tool,
        )


def step_and_reset_renderers(bank, probe: ProbeSpec, config: RendererConfig) -> tuple[Renderer, Renderer]:
    """A task's two renderers over one bank: the step renderer (compiled if config says so) and the
    one resets use. Resets render a varying number of environments, which a compiled renderer would
    recompile for at every new batch size, so a compiled step renderer gets an eager twin."""
    step = Renderer(bank, probe, config=config)
    return step, (Renderer(bank, probe, config=replace(config, compile=False)) if config.compile else step)
