"""`ProbeSpec`: transducer geometry, scan lines in the probe frame and the scan-conversion map.

Probe frame: origin at the centre of the probe face, +z along the beam into the body, +x lateral
across the image, +y elevation. Convex probes have their centre of curvature at (0, 0, -radius);
phased probes fan out from the face centre (radius 0). Metres and radians throughout.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Mapping

import torch
import yaml

from sim.config import build
from sim.errors import InputError
from sim.resources import conf_dir

PROBE_PRESETS = conf_dir() / "probe"
KINDS = ("linear", "convex", "phased")
SPEED_OF_SOUND_M_S = 1540.0


# One-way beam width at the focus of a Hann-apodized aperture, in lambda F / D: scanners taper
# their apertures to keep side lobes down, which widens the main lobe from 1.21 (no taper) to 2.0.
HANN_BEAM_WIDTH = 2.0
FWHM_PER_E_RADIUS = 2 * math.sqrt(math.log(2))  # a Gaussian beam's amplitude FWHM over its 1/e radius


def beam_fwhm_m(
    depth_m: torch.Tensor, wavelength_m: float | torch.Tensor, focus_m: float, aperture_m: float
) -> torch.Tensor:
    """Two-way lateral beam width (amplitude FWHM, m) of a Hann-apodized array with a fixed transmit
    focus and dynamic receive focusing, at `depth_m`; shapes broadcast.

    Transmit: a Gaussian beam whose waist at the focus F is w0 = 2 lambda F / D (`HANN_BEAM_WIDTH`),
    widening as w_tx = w0 sqrt(1 + ((z - F) / z_R)^2) with the Rayleigh range z_R = pi W0^2 / lambda
    of its 1/e radius W0. Receive: dynamic focusing at the transmit F-number until the aperture D
    is full (at F), w_rx = 2 lambda max(z, F) / D. Two-way, the product of the two Gaussian
    profiles: w = (w_tx^-2 + w_rx^-2)^-1/2, so sqrt(2) lambda F / D at the focus (the narrowest),
    about 2 lambda F / D in the near field, and growing in proportion to the depth far beyond.
    """
    waist = HANN_BEAM_WIDTH * wavelength_m * focus_m / aperture_m
    rayleigh = math.pi * (waist / FWHM_PER_E_RADIUS) ** 2 / wavelength_m
    tx = waist * torch.sqrt(1 + ((depth_m - focus_m) / rayleigh) ** 2)
    rx = HANN_BEAM_WIDTH * wavelength_m * torch.clamp(depth_m, min=focus_m) / aperture_m
    return torch.rsqrt(tx**-2 + rx**-2)


@dataclass(frozen=True)
class ProbeSpec:
    """Transducer and image geometry.

    kind: "linear", "convex" or "phased".
    frequency_mhz: centre frequency. depth_m: imaging depth along each line from the face.
    width_m: aperture width (linear). fov_deg: field of view (convex, phased).
    radius_m: face radius of curvature (convex). lines / samples: scan lines and samples per
    line (None: the output width / height). elevation_m: slice thickness (the elevation beam's
    two-way FWHM; at its focus if elevation_focus_m is set, where the lens focuses it, else at
    every depth: `slice_fwhm_m`); elevation_rays > 1 averages tissue properties over that many
    rays across it (`elevation_offsets`). pulse_cycles: pulse length (its
    envelope's full width at half maximum, in cycles), setting the axial point-spread function.
    aperture_m: the active aperture D across the lines; focus_m: the transmit focal depth F
    (None: half the imaging depth); with the wavelength they set the lateral point-spread
    function (`beam_fwhm_m`). image_height / image_width: output pixels.
    """

    kind: str = "linear"
    frequency_mhz: float = 7.5
    depth_m: float = 0.06
    width_m: float = 0.05
    fov_deg: float = 70.0
    radius_m: float = 0.05
    lines: int | None = None
    samples: int | None = None
    elevation_m: float = 0.002
    elevation_rays: int = 1
    elevation_focus_m: float | None = None
    pulse_cycles: float = 2.0
    aperture_m: float = 0.025
    focus_m: float | None = None
    image_height: int = 200
    image_width: int = 150

    def __post_init__(self) -> None:
        def need(ok: bool, field: str, expected: str) -> None:
            if not ok:
                raise InputError(f"probe {field}: expected {expected}, got {getattr(self, field)!r}")

        need(self.kind in KINDS, "kind", f"one of {KINDS}")
        need(0.5 <= self.frequency_mhz <= 30, "frequency_mhz", "a centre frequency in 0.5..30 MHz")
        need(0.005 <= self.depth_m <= 0.4, "depth_m", "an imaging depth in 0.005..0.4 m")
        need(self.kind != "linear" or 0.005 <= self.width_m <= 0.2, "width_m", "an aperture width in 0.005..0.2 m")
        need(self.kind == "linear" or 5 <= self.fov_deg <= 170, "fov_deg", "a field of view in 5..170 degrees")
        need(self.kind != "convex" or 0.005 <= self.radius_m <= 0.2, "radius_m", "a convex radius in 0.005..0.2 m")
        need(self.lines is None or 2 <= self.lines <= 4096, "lines", "None or 2..4096 scan lines")
        need(self.samples is None or 8 <= self.samples <= 8192, "samples", "None or 8..8192 samples per line")
        need(0 <= self.elevation_m <= 0.02, "elevation_m", "a slice thickness in 0..0.02 m")
        need(1 <= self.elevation_rays <= 16, "elevation_rays", "1..16 rays")
        need(
            self.elevation_focus_m is None or 0.002 <= self.elevation_focus_m <= 0.4,
            "elevation_focus_m",
            "None or a lens focal depth in 0.002..0.4 m",
        )
        need(0.5 <= self.pulse_cycles <= 10, "pulse_cycles", "0.5..10 cycles")
        need(0.001 <= self.aperture_m <= 0.1, "aperture_m", "an active aperture in 0.001..0.1 m")
        need(self.focus_m is None or 0.001 <= self.focus_m <= 0.4, "focus_m", "None or a focal depth in 0.001..0.4 m")
        need(8 <= self.image_height <= 4096, "image_height", "8..4096 pixels")
        need(8 <= self.image_width <= 4096, "image_width", "8..4096 pixels")

    @classmethod
    def preset(cls, name: str, **overrides) -> "ProbeSpec":
        """Load `conf/probe/<name>.yaml` (the settings that differ from the defaults; its Hydra defaults
        list names the schema, these defaults) with keyword overrides."""
        path = PROBE_PRESETS / f"{name}.yaml"
        if not path.exists():
            known = sorted(p.stem for p in PROBE_PRESETS.glob("*.yaml"))
            raise InputError(f"probe preset {name!r}: expected one of {known}")
        settings = {k: v for k, v in yaml.safe_load(path.read_text()).items() if k != "defaults"}
        return cls.from_dict({**settings, **overrides})

    @classmethod
    def from_dict(cls, cfg: Mapping) -> "ProbeSpec":
        """A spec from a mapping of fields; defaults for what it leaves out, unknown keys refused (InputError)."""
        return build(cls, cfg, "probe config")

    @classmethod
    def policy_probe(cls, probe: str | Mapping | ProbeSpec, image_size: int) -> ProbeSpec:
        """A probe (preset name, field mapping or spec) imaging a square policy image of image_size
        pixels, one scan line per column and one sample per row (the tasks' observation images)."""
        if isinstance(probe, str):
            probe = cls.preset(probe)
        elif not isinstance(probe, ProbeSpec):
            probe = cls.from_dict(probe)
        return replace(probe, image_height=image_size, image_width=image_size, lines=None, samples=None)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def n_lines(self) -> int:
        return self.lines or self.image_width

    @property
    def n_samples(self) -> int:
        return self.samples or self.image_height

    @property
    def apex_radius_m(self) -> float:
        """Distance from the centre of curvature to the face (0 for phased, unused for linear)."""
        return self.radius_m if self.kind == "convex" else 0.0

    @property
    def sample_spacing_m(self) -> float:
        return self.depth_m / (self.n_samples - 1)

    @property
    def wavelength_m(self) -> float:
        return SPEED_OF_SOUND_M_S / (self.frequency_mhz * 1e6)

    @property
    def focal_depth_m(self) -> float:
        """The transmit focus F (m): focus_m, or half the imaging depth when it is None."""
        return self.focus_m if self.focus_m is not None else self.depth_m / 2

    def line_spacing_m(self, dist: torch.Tensor) -> torch.Tensor:
        """Distance between neighbouring scan lines (m) at the distances `dist` (m) along them:
        constant for a linear array, (radius + dist) x the angular step for a sector (at least
        1 um, so the apex of a phased sector does not divide by zero)."""
        if self.kind == "linear":
            return torch.full_like(dist, self.width_m / (self.n_lines - 1))
        step = math.radians(self.fov_deg) / (self.n_lines - 1)
        return ((self.apex_radius_m + dist) * step).clamp_min(1e-6)

    def scan_lines(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Scan-line origins (L, 3), unit directions (L, 3) and sample distances (S,), metres."""
        L, S = self.n_lines, self.n_samples
        dist = torch.linspace(0.0, self.depth_m, S, dtype=torch.float64)
        if self.kind == "linear":
            x = torch.linspace(-self.width_m / 2, self.width_m / 2, L, dtype=torch.float64)
            origins = torch.stack([x, torch.zeros(L, dtype=x.dtype), torch.zeros(L, dtype=x.dtype)], -1)
            dirs = torch.tensor([0.0, 0.0, 1.0], dtype=x.dtype).expand(L, 3)
        else:
            half = math.radians(self.fov_deg) / 2
            phi = torch.linspace(-half, half, L, dtype=torch.float64)
            dirs = torch.stack([phi.sin(), torch.zeros_like(phi), phi.cos()], -1)
            r = self.apex_radius_m
            origins = dirs * r + torch.tensor([0.0, 0.0, -r], dtype=phi.dtype)
        f32 = dict(dtype=torch.float32, device=device)
        return origins.to(**f32), dirs.contiguous().to(**f32), dist.to(**f32)

    def lateral_fwhm_m(self, depth_m: torch.Tensor, frequency_mhz: float | torch.Tensor | None = None) -> torch.Tensor:
        """The two-way lateral beam width (m, amplitude FWHM) at `depth_m` (see `beam_fwhm_m`), at
        `frequency_mhz` (None: the probe's); shapes broadcast."""
        f = self.frequency_mhz if frequency_mhz is None else frequency_mhz
        return beam_fwhm_m(depth_m, SPEED_OF_SOUND_M_S / (f * 1e6), self.focal_depth_m, self.aperture_m)

    def slice_fwhm_m(self, depth_m: torch.Tensor) -> torch.Tensor:
        """The slice thickness (m, two-way amplitude FWHM of the elevation beam) at `depth_m`.

        Without `elevation_focus_m`, `elevation_m` at every depth. With it, the elevation lens's
        fixed focus on transmit and receive: a Gaussian beam at the centre frequency whose waist,
        at that depth, is `elevation_m` two-way (its one-way FWHM sqrt(2) times that), widening as
        sqrt(1 + ((z - F) / z_R)^2) with the Rayleigh range z_R = pi W0^2 / lambda of its one-way
        1/e radius W0; two-way the profile squares, which keeps the ratio."""
        if self.elevation_focus_m is None:
            return torch.full_like(depth_m, self.elevation_m)
        one_way_radius = math.sqrt(2) * self.elevation_m / FWHM_PER_E_RADIUS
        rayleigh = math.pi * one_way_radius**2 / self.wavelength_m
        return self.elevation_m * torch.sqrt(1 + ((depth_m - self.elevation_focus_m) / rayleigh) ** 2)

    def elevation_offsets(self, depth_m: torch.Tensor) -> torch.Tensor:
        """(E, P) elevation (+y) offsets, metres, of the `elevation_rays` across which tissue is
        averaged at each of the P depths `depth_m` (on its device): the central ray alone for one;
        for more, the (e + 1/2) / E quantiles of the two-way elevation beam's Gaussian profile
        (`slice_fwhm_m`), so that equally weighted rays average the tissue as the beam weighs it."""
        e = self.elevation_rays
        u = torch.distributions.Normal(0.0, 1.0).icdf((torch.arange(e, dtype=torch.float64) + 0.5) / e)
        sigma = self.slice_fwhm_m(depth_m.double().cpu()) / (2 * math.sqrt(2 * math.log(2)))
        return (u[:, None] * sigma[None]).to(depth_m.device, torch.float32)

    @property
    def face_half_width_m(self) -> float:
        """Half the probe face's width along its x (m): the aperture (linear, phased) or the curved
        face's chord (convex): how far the probe body reaches across the skin from its centre."""
        if self.kind == "convex":
            return self.radius_m * math.sin(math.radians(self.fov_deg) / 2)
        return self.width_m / 2

    def image_extent(self) -> tuple[float, float, float, float]:
        """(x_min, x_max, z_min, z_max) of the output image in the probe frame, metres."""
        if self.kind == "linear":
            return -self.width_m / 2, self.width_m / 2, 0.0, self.depth_m
        half, r = math.radians(self.fov_deg) / 2, self.apex_radius_m
        reach = r + self.depth_m
        x = reach * math.sin(half)
        return -x, x, r * math.cos(half) - r, self.depth_m

    def pixel_spacing_m(self) -> tuple[float, float]:
        """(row, column) pixel size in metres. Sector images use square pixels (letterboxed)."""
        x0, x1, z0, z1 = self.image_extent()
        H, W = self.image_height, self.image_width
        if self.kind == "linear":
            return (z1 - z0) / (H - 1), (x1 - x0) / (W - 1)
        s = max((z1 - z0) / (H - 1), (x1 - x0) / (W - 1))
        return s, s

    def pixel_positions(self) -> torch.Tensor:
        """(H, W, 2) probe-frame (x, z) of each output pixel centre, metres (float64)."""
        x0, x1, z0, z1 = self.image_extent()
        dz, dx = self.pixel_spacing_m()
        H, W = self.image_height, self.image_width
        zc, xc = (z0 + z1) / 2, (x0 + x1) / 2
        z = zc + (torch.arange(H, dtype=torch.float64) - (H - 1) / 2) * dz
        x = xc + (torch.arange(W, dtype=torch.float64) - (W - 1) / 2) * dx
        zz, xx = torch.meshgrid(z, x, indexing="ij")
        return torch.stack([xx, zz], -1)

    def scan_coordinates(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Where each output pixel falls in the (sample, line) grid.

        Returns (H, W, 2) float64 fractional (sample, line) indices and an (H, W) bool mask of
        pixels inside the field of view.
        """
        xz = self.pixel_positions()
        x, z = xz[..., 0], xz[..., 1]
        L, S = self.n_lines, self.n_samples
        if self.kind == "linear":
            line = (x + self.width_m / 2) / self.width_m * (L - 1)
            dist = z
        else:
            r = self.apex_radius_m
            half = math.radians(self.fov_deg) / 2
            phi = torch.atan2(x, z + r)
            dist = torch.sqrt(x * x + (z + r) ** 2) - r
            line = (phi + half) / (2 * half) * (L - 1)
        sample = dist / self.depth_m * (S - 1)
        tol = 1e-6
        inside = (line >= -tol) & (line <= L - 1 + tol) & (sample >= -tol) & (sample <= S - 1 + tol)
        return torch.stack([sample.clamp(0, S - 1), line.clamp(0, L - 1)], -1), inside
