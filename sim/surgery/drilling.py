"""Tissue-dependent drilling of a pedicle pilot hole, batched over environments.

A drill enters along a fixed unit axis from an entry point (patient frame, metres); its state
per environment is the drilled depth along that axis, the channel from the entry to the tip.
Each step (`Drill.step`, in sub-steps of at most `substep_m` at full feed) advances the depth by

    feed = command x max_feed_m_s x f_zone,    command in [0, 1] (NaN -> 0, +inf -> 1),

where f_zone is the feed fraction of what the drill point is cutting. The point is a cone
(`point_angle_deg`); its two lips sweep every radius from the axis to the bit's edge, each radius
removing the same chip per revolution, so the point is sampled at `ZONE_STATIONS` radii (back
from the tip along the cone) and `ZONE_AZIMUTHS` angles, equally weighted. Cutting resistances
add along the lips: f_zone is the harmonic mean of the samples' feed fractions (a point half in
cortex advances at about twice the cortical feed, not halfway to the free feed).

Material per sample, one of two paths chosen per patient:
- CT (`Patient.ct`, HU, trilinear): the feed fraction is interpolated log-linearly in HU between
  anchors (soft tissue up to `hu_soft`, cancellous bone at `hu_cancellous`, cortical bone from
  `hu_cortical`).
- Labels (no CT, or `material_source="labels"`): the signed distance to the surface of the "bone"
  tissue class (all bone of the patient, not one vertebra, so neighbouring vertebrae, sacrum and
  ribs drill as bone too), trilinear: outside is soft tissue, bone within `cortex_m` of its
  surface cortical, deeper bone cancellous (the labels have one bone class, no cortical split).
The two agree where the CT holds exactly the anchor values of the labelled materials.

Thrust (N) along the axis follows the drilling literature collected in REFERENCE.md §7: it grows
linearly with bone density and as the 0.7 power of the feed rate, and cortical bone takes about
ten times the force of cancellous bone at the same feed:

    thrust = thrust_n x resistance x (feed / REF_FEED_M_S) ^ 0.7,

with resistance 0 in soft tissue, 1 in cancellous bone and feed_cancellous / feed_cortical
(10 by default) in cortex; on the CT path it ramps with HU like the feed fraction. The thrust
therefore rises when the point enters cortex (about 2x cancellous at full command: ten times the
resistance at a tenth of the feed) and falls toward 0 as it breaks through a wall into soft
tissue or the spinal canal. It is a phenomenological signal (no chip, heat or wear model).

Lateral tip motion is resisted once the shaft is held by bone: `lateral_factor` scales a
commanded lateral motion from 1 (not in bone) toward `lateral_floor` as the engaged length of
bone along the drilled channel grows (e-folding length `lateral_depth_m`).

Lookups are one trilinear gather over all environments (the `PatientBank` layout: per patient a
cropped, padded block in one flat tensor), so nothing loops over environments and the step reads
nothing back to the host.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch

from sim.anatomy.patient import Patient
from sim.anatomy.tissues import TISSUE_ID
from sim.errors import InputError, check_keys, require, require_number
from sim.surgery.distance import CropVolumes, bounding_box, signed_distance

MAX_FEED_BOUND_M_S = 0.01  # the hard ceiling of any configured feed (10 mm/s; SonoGym fed at up to 1.8 m/s)
REF_FEED_M_S = 1e-3  # the feed at which thrust_n is defined: clinical feed rates are about 1 mm/s (REFERENCE §7)
THRUST_FEED_EXPONENT = 0.7  # thrust grows as about the 0.7 power of feed rate (REFERENCE §7)
ZONE_STATIONS = 4  # radii sampled along the lips (engineering: the point is about one voxel long)
ZONE_AZIMUTHS = 4  # angles per radius, staggered by half a step between radii (8 directions in all)
MATERIAL_SOURCES = ("auto", "labels", "ct")
HU_RANGE = (-1000.0, 3000.0)  # where the HU anchors may lie
SOFT_PAD_HU = -1000.0  # outside a patient's CT crop: air, below any soft-tissue anchor
SOFT_PAD_M = 1.0  # outside a patient's bone crop: 1 m from any bone


@dataclass(frozen=True)
class DrillCfg:
    """A pilot drill and the tissue model it cuts. SI units; bounds are checked on construction.

    diameter_m: bit diameter. 3.5 mm, a common pilot drill for the 6.5-7.5 mm lumbar pedicle
        screws of REFERENCE §7 (engineering choice; must stay below the screw's core).
    length_m: the longest channel the bit can drill from its entry point. 80 mm: the breach
        module's channel length (`ChannelBreach.max_length_m`), longer than the longest lumbar
        chord (about 52 mm at L2-L3, Zindrick 1987) plus an approach (engineering choice).
    point_angle_deg: the included angle of the drill point; 118 deg, the standard twist-drill
        point (bone drills use about 90-120 deg), makes the 3.5 mm point about 1 mm long.
    max_feed_m_s: feed at full command in soft tissue (feed_soft = 1). 3 mm/s, so that full
        command in cancellous bone is the clinical 1 mm/s (REFERENCE §7); at most
        MAX_FEED_BOUND_M_S.
    feed_soft, feed_cancellous, feed_cortical: feed fraction of max_feed_m_s per material, in
        (0, 1] and non-increasing. Soft tissue 1 (free); cancellous 1/3 (the clinical 1 mm/s
        above); cortical 1/30, ten times slower than cancellous, as cortical bone takes about ten
        times the force of cancellous bone at the same feed (REFERENCE §7).
    cortex_m: cortical shell thickness on the label path (no CT). 1.5 mm, the middle of the
        1-2 mm lumbar pedicle cortex (issue 12's brief; the phantom's body shell is about 2 mm);
        not in REFERENCE.md, an engineering choice.
    hu_soft, hu_cancellous, hu_cortical: CT anchors (HU, ascending) of the feed fraction:
        feed_soft at and below hu_soft, feed_cancellous at hu_cancellous, feed_cortical at and
        above hu_cortical, log-linear between. 150 HU sits above muscle, blood and disc (40-90 HU)
        and below most trabecular bone; 250 HU is adult lumbar trabecular bone (and the phantom's
        CANCELLOUS_HU); 1000 HU is where cortical bone starts. Engineering choices within the
        issue brief's ranges (soft below ~200, cancellous ~250-400, cortical from ~1000 HU).
    thrust_n: thrust in cancellous bone at REF_FEED_M_S. 3 N makes the cortical thrust at full
        command (10 x at 0.1 mm/s) about 6 N, near the 5.7 N peak of human trans-pedicular
        drilling and inside the 0.6-29.6 N porcine range (REFERENCE §7).
    lateral_floor: lateral-motion factor with the shaft deep in bone (0 locks it). 0.05: the bit
        can still skive and bend a little (engineering choice).
    lateral_depth_m: engaged bone length over which the factor falls by e toward the floor.
        2 mm: about one cortex, so the bit is held once it is through the entry cortex
        (engineering choice).
    shaft_step_m: sampling step of the channel for the engaged bone length (1 mm).
    substep_m: the most the bit advances at full feed before its material is looked up again
        (a step is split into as many sub-steps): 0.1 mm, under half the spacing of the point's
        samples (0.26 mm), so the bit never runs into a cortex by more than 0.1 mm at the speed
        of the tissue before it (3 sub-steps of a 0.1 s step at 3 mm/s; engineering choice).
    material_source: "auto" (CT where a patient has one, labels otherwise), "labels" or "ct"
        (every patient must have a CT).
    """

    diameter_m: float = 3.5e-3
    length_m: float = 0.08
    point_angle_deg: float = 118.0
    max_feed_m_s: float = 3e-3
    feed_soft: float = 1.0
    feed_cancellous: float = 1.0 / 3.0
    feed_cortical: float = 1.0 / 30.0
    cortex_m: float = 1.5e-3
    hu_soft: float = 150.0
    hu_cancellous: float = 250.0
    hu_cortical: float = 1000.0
    thrust_n: float = 3.0
    lateral_floor: float = 0.05
    lateral_depth_m: float = 2e-3
    shaft_step_m: float = 1e-3
    substep_m: float = 1e-4
    material_source: str = "auto"

    def __post_init__(self) -> None:
        def number(name: str, low: float, high: float, low_open: bool = True) -> None:
            require_number(getattr(self, name), f"drill {name}", low, high, low_open=low_open)

        number("diameter_m", 0.0, 0.01)
        number("length_m", 0.0, 0.3)
        number("point_angle_deg", 60.0, 150.0, low_open=False)
        number("max_feed_m_s", 0.0, MAX_FEED_BOUND_M_S)
        number("feed_soft", 0.0, 1.0)
        number("feed_cancellous", 0.0, self.feed_soft)
        number("feed_cortical", 0.0, self.feed_cancellous)
        number("cortex_m", 0.0, 0.005)
        number("hu_soft", *HU_RANGE, low_open=False)
        number("hu_cancellous", self.hu_soft, HU_RANGE[1])
        number("hu_cortical", self.hu_cancellous, HU_RANGE[1])
        number("thrust_n", 0.0, 100.0)
        number("lateral_floor", 0.0, 1.0, low_open=False)
        number("lateral_depth_m", 0.0, 0.05)
        number("shaft_step_m", 0.0, 0.005)
        number("substep_m", 0.0, 0.005)
        require(
            self.material_source in MATERIAL_SOURCES,
            "drill material_source",
            f"one of {list(MATERIAL_SOURCES)}",
            repr(self.material_source),
        )

    @classmethod
    def from_dict(cls, cfg: Mapping[str, object] | None) -> DrillCfg:
        """A config from a mapping of field overrides (e.g. Hydra's); unknown keys are refused."""
        cfg = dict(cfg or {})
        check_keys(cfg, cls, "drill")
        return cls(**cfg)

    @property
    def radius_m(self) -> float:
        return self.diameter_m / 2

    @property
    def point_length_m(self) -> float:
        """Axial length of the drill point's cone (m)."""
        return self.radius_m / math.tan(math.radians(self.point_angle_deg) / 2)


@dataclass
class Material:
    """What the drill meets at S points of N environments, each (N, S) float32: feed fraction of
    max feed, resistance (thrust at equal feed relative to cancellous bone: 0 soft, 1 cancellous)
    and bone fraction in [0, 1] (0 soft tissue, 1 bone)."""

    feed: torch.Tensor
    resistance: torch.Tensor
    bone: torch.Tensor


@dataclass
class DrillStep:
    """One step of N drills, each (N,) float32, averaged over the step's sub-steps where it
    varies within the step. depth_m: the new drilled depth (m); feed_m_s: the actual feed (m/s,
    at most max_feed_m_s); thrust_n: thrust along the axis (N); feed_fraction: the point's feed
    fraction of max_feed_m_s; engaged_m: length of bone along the drilled channel at the new
    depth (m); lateral: factor in [lateral_floor, 1] for commanded lateral tip motion."""

    depth_m: torch.Tensor
    feed_m_s: torch.Tensor
    thrust_n: torch.Tensor
    feed_fraction: torch.Tensor
    engaged_m: torch.Tensor
    lateral: torch.Tensor


class Drill:
    """Drilling physics for N environments over `patients` (indexed like a `PatientBank` built
    from the same list), on `device`.

    Per patient it keeps a float16 volume: the CT (HU, cropped to the voxels above `hu_soft`)
    where the CT path applies, else the signed distance (m, negative inside) to the bone class
    (cropped to the bone). `use_ct` (P,) bool says which, per patient.
    """

    def __init__(
        self, patients: Sequence[Patient], cfg: DrillCfg | None = None, device: torch.device | str = "cpu"
    ) -> None:
        if not patients:
            raise InputError("patients: expected at least one patient, got none")
        self.cfg = cfg = cfg if cfg is not None else DrillCfg()
        if not isinstance(cfg, DrillCfg):
            raise InputError(f"cfg: expected a DrillCfg (use DrillCfg.from_dict), got {type(cfg).__name__}")
        if cfg.material_source == "ct":
            missing = [p.name for p in patients if p.ct is None]
            if missing:
                raise InputError(
                    f"patients {missing} ct: expected a CT volume in HU for drill material_source='ct' "
                    "(they have tissue labels only; use 'auto' or 'labels')"
                )
        self.device = torch.device(device)
        use_ct = [cfg.material_source != "labels" and p.ct is not None for p in patients]
        self.use_ct = torch.tensor(use_ct, device=self.device)
        self._any_ct, self._all_ct = any(use_ct), all(use_ct)
        affines = [p.affine for p in patients]
        self.hu = CropVolumes(
            [self._hu_crop(p) if ct else None for p, ct in zip(patients, use_ct)], affines, SOFT_PAD_HU, self.device
        )
        self.bone_distance = CropVolumes(
            [None if ct else self._bone_crop(p) for p, ct in zip(patients, use_ct)], affines, SOFT_PAD_M, self.device
        )
        # The drill point's sample pattern (Z = stations x azimuths): distance back from the tip
        # along the cone and radial offset (m), and the angle's cosine and sine.
        t = (torch.arange(ZONE_STATIONS, dtype=torch.float32) + 0.5) / ZONE_STATIONS
        phi = (torch.arange(ZONE_AZIMUTHS)[None] + 0.5 * (torch.arange(ZONE_STATIONS)[:, None] % 2)) * (
            2 * math.pi / ZONE_AZIMUTHS
        )
        t = t[:, None].expand(ZONE_STATIONS, ZONE_AZIMUTHS).reshape(-1)
        self._zone_back = (t * cfg.point_length_m).to(self.device)
        self._zone_radial = (t * cfg.radius_m).to(self.device)
        self._zone_cos = phi.reshape(-1).cos().to(self.device)
        self._zone_sin = phi.reshape(-1).sin().to(self.device)
        # The channel's segments [j, j + 1) x shaft_step_m, sampled at their midpoints.
        segments = math.ceil(cfg.length_m / cfg.shaft_step_m - 1e-9)
        self._shaft_start = torch.arange(segments, dtype=torch.float32, device=self.device) * cfg.shaft_step_m
        self._ex = torch.tensor([1.0, 0.0, 0.0], device=self.device)
        self._ey = torch.tensor([0.0, 1.0, 0.0], device=self.device)
        self._log_feed = tuple(math.log(f) for f in (cfg.feed_soft, cfg.feed_cancellous, cfg.feed_cortical))

    def _hu_crop(self, patient: Patient) -> tuple[np.ndarray, np.ndarray] | None:
        """The patient's CT (HU) cropped to its voxels above hu_soft: outside them every value is
        soft tissue to the model, like the air padding."""
        box = bounding_box(patient.ct > self.cfg.hu_soft)
        return None if box is None else (patient.ct[box[0]], box[1])

    def _bone_crop(self, patient: Patient) -> tuple[np.ndarray, np.ndarray] | None:
        """Signed distance (m) to the patient's bone class, cropped to the bone."""
        bone = patient.tissue == TISSUE_ID["bone"]
        box = bounding_box(bone)
        return None if box is None else (signed_distance(bone[box[0]], patient.spacing), box[1])

    def nbytes(self) -> int:
        """Bytes of the per-patient volumes on the device."""
        return self.hu.nbytes() + self.bone_distance.nbytes()

    # -- materials

    def _from_labels(self, d: torch.Tensor) -> Material:
        """Material from the signed distance d (m, negative in bone) to the bone surface."""
        cfg = self.cfg
        bone = d < 0
        cortical = bone & (d > -cfg.cortex_m)
        feed = torch.where(bone, torch.where(cortical, cfg.feed_cortical, cfg.feed_cancellous), cfg.feed_soft)
        cortical_resistance = cfg.feed_cancellous / cfg.feed_cortical
        resistance = torch.where(bone, torch.where(cortical, cortical_resistance, 1.0), 0.0)
        return Material(feed, resistance, bone.float())

    def _from_hu(self, hu: torch.Tensor) -> Material:
        """Material from HU: log feed fraction piecewise linear between the anchors; the bone
        fraction ramps from hu_soft to hu_cancellous, and with it the resistance (continuous,
        0 in soft tissue)."""
        cfg = self.cfg
        log_soft, log_cancellous, log_cortical = self._log_feed
        to_cancellous = ((hu - cfg.hu_soft) / (cfg.hu_cancellous - cfg.hu_soft)).clamp(0.0, 1.0)
        to_cortical = ((hu - cfg.hu_cancellous) / (cfg.hu_cortical - cfg.hu_cancellous)).clamp(0.0, 1.0)
        feed = torch.exp(
            log_soft + to_cancellous * (log_cancellous - log_soft) + to_cortical * (log_cortical - log_cancellous)
        )
        return Material(feed, to_cancellous * cfg.feed_cancellous / feed, to_cancellous)

    def material(self, points: torch.Tensor, patient_idx: torch.Tensor) -> Material:
        """The material at points (N, S, 3), patient frame (m), of patients patient_idx (N,) int64
        (in range: `check`). Sync-free."""
        if self._all_ct:
            return self._from_hu(self.hu.sample(points, patient_idx))
        labels = self._from_labels(self.bone_distance.sample(points, patient_idx))
        if not self._any_ct:
            return labels
        ct = self._from_hu(self.hu.sample(points, patient_idx))
        use_ct = self.use_ct[patient_idx][:, None]
        return Material(
            torch.where(use_ct, ct.feed, labels.feed),
            torch.where(use_ct, ct.resistance, labels.resistance),
            torch.where(use_ct, ct.bone, labels.bone),
        )

    # -- geometry

    def point_offsets(self, axis: torch.Tensor) -> torch.Tensor:
        """(N, Z, 3) sample points on the drill point's cone (Z = ZONE_STATIONS x ZONE_AZIMUTHS)
        relative to the tip (m), of drills along unit axis (N, 3)."""
        # Two unit vectors across the axis: the axis crossed with whichever of x, y it is not near.
        helper = torch.where(axis[:, :1].abs() < 0.9, self._ex, self._ey)
        u = torch.linalg.cross(axis, helper)
        u = u / u.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        v = torch.linalg.cross(axis, u)
        across = self._zone_cos[None, :, None] * u[:, None] + self._zone_sin[None, :, None] * v[:, None]
        return across * self._zone_radial[None, :, None] - axis[:, None] * self._zone_back[None, :, None]

    def engaged_m(
        self, entry: torch.Tensor, axis: torch.Tensor, depth_m: torch.Tensor, patient_idx: torch.Tensor
    ) -> torch.Tensor:
        """(N,) length (m) of bone along the channels from entry (N, 3) along unit axis (N, 3) to
        depth_m (N,): the shaft's midpoint samples, each segment counted for its drilled part."""
        step = self.cfg.shaft_step_m
        points = entry[:, None] + axis[:, None] * (self._shaft_start + step / 2)[None, :, None]
        bone = self.material(points, patient_idx).bone  # (N, J)
        drilled = ((depth_m[:, None] - self._shaft_start[None]) / step).clamp(0.0, 1.0)
        return (bone * drilled).sum(-1) * step

    def lateral_factor(self, engaged_m: torch.Tensor) -> torch.Tensor:
        """(N,) factor in [lateral_floor, 1] for commanded lateral tip motion, from the engaged
        bone length engaged_m (N,) (m): 1 out of bone, toward lateral_floor as the bone holds the
        shaft over more length."""
        floor = self.cfg.lateral_floor
        return floor + (1.0 - floor) * torch.exp(-engaged_m / self.cfg.lateral_depth_m)

    # -- the step

    @staticmethod
    def _check_shapes(
        entry: torch.Tensor,
        axis: torch.Tensor,
        depth_m: torch.Tensor,
        patient_idx: torch.Tensor,
        command: torch.Tensor | None = None,
    ) -> None:
        """InputError naming the argument whose shape or dtype is wrong (metadata only: sync-free)."""
        n = entry.shape[0] if entry.ndim == 2 else -1
        require(entry.ndim == 2 and entry.shape[1] == 3, "entry", "shape (N, 3)", tuple(entry.shape))
        require(tuple(axis.shape) == (n, 3), "axis", f"shape ({n}, 3) like entry", tuple(axis.shape))
        require(tuple(depth_m.shape) == (n,), "depth_m", f"shape ({n},)", tuple(depth_m.shape))
        require(tuple(patient_idx.shape) == (n,), "patient_idx", f"shape ({n},)", tuple(patient_idx.shape))
        require(
            not patient_idx.is_floating_point() and not patient_idx.is_complex() and patient_idx.dtype != torch.bool,
            "patient_idx",
            "an integer tensor",
            patient_idx.dtype,
        )
        for name, x in (("entry", entry), ("axis", axis), ("depth_m", depth_m)):
            require(x.is_floating_point(), name, "a floating-point tensor", x.dtype)
        if command is not None:
            require(tuple(command.shape) == (n,), "command", f"shape ({n},)", tuple(command.shape))

    def check(self, entry: torch.Tensor, axis: torch.Tensor, depth_m: torch.Tensor, patient_idx: torch.Tensor) -> None:
        """InputError naming the input that `step` cannot take: shapes, non-finite values, axes
        that are not unit vectors, patient indices out of range. Reads values (a host sync): call
        it where a channel is entered or reset, not every step."""
        self._check_shapes(entry, axis, depth_m, patient_idx)
        for name, x in (("entry", entry), ("axis", axis), ("depth_m", depth_m)):
            require(bool(torch.isfinite(x).all()), name, "finite values", "NaN or infinite values")
        norm = axis.norm(dim=-1)
        if not bool(((norm - 1).abs() < 1e-3).all()):
            raise InputError(f"axis: expected unit vectors, got norms {norm.tolist()[:8]}")
        p = len(self.use_ct)
        bad = (patient_idx < 0) | (patient_idx >= p)
        if bool(bad.any()):
            raise InputError(f"patient_idx: expected values in [0, {p}), got {patient_idx[bad].unique().tolist()[:10]}")

    def step(
        self,
        entry: torch.Tensor,
        axis: torch.Tensor,
        depth_m: torch.Tensor,
        command: torch.Tensor,
        patient_idx: torch.Tensor,
        dt_s: float,
    ) -> DrillStep:
        """Advance N drills by dt_s seconds, in ceil(max_feed_m_s x dt_s / substep_m) equal
        sub-steps that each look up the material at the point again.

        entry (N, 3) and unit axis (N, 3): each channel's entry point and direction, patient frame
        (m; the axis is normalised); depth_m (N,): drilled depth (clamped into [0, length_m]);
        command (N,): feed command in [0, 1] of max_feed_m_s (sanitised: NaN -> 0, +inf and
        anything above 1 -> 1, below 0 -> 0); patient_idx (N,) integer; dt_s: step length (s), in
        (0, 1]. Shapes and dtypes are checked here; values that `check` refuses (non-finite
        poses, patients out of range) are not, and give undefined results. Sync-free.
        """
        require_number(dt_s, "dt_s", 0.0, 1.0, low_open=True)
        self._check_shapes(entry, axis, depth_m, patient_idx, command)
        cfg = self.cfg
        entry, axis = entry.to(torch.float32), axis.to(torch.float32)
        axis = axis / axis.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        patient_idx = patient_idx.long()
        depth = depth_m.to(torch.float32).clamp(0.0, cfg.length_m)
        command = command.to(torch.float32).nan_to_num(nan=0.0, posinf=1.0, neginf=0.0).clamp(0.0, 1.0)
        # Sub-steps short enough (substep_m at full feed) that the bit never runs past a wall at
        # the speed of the material before it; their number depends on settings only (no sync).
        substeps = max(1, math.ceil(cfg.max_feed_m_s * dt_s / cfg.substep_m - 1e-9))
        h = dt_s / substeps
        feed_sum, thrust_sum, fraction_sum = (torch.zeros_like(depth) for _ in range(3))
        point = entry[:, None] + self.point_offsets(axis)  # (N, Z, 3) with the tip at the entry
        for _ in range(substeps):
            zone = self.material(point + axis[:, None] * depth[:, None, None], patient_idx)
            fraction = (1.0 / (1.0 / zone.feed).mean(-1)).clamp(max=cfg.feed_soft)  # resistances add
            # The bit stops at its length: the feed is what it really advances.
            feed = torch.minimum(command * cfg.max_feed_m_s * fraction, (cfg.length_m - depth) / h)
            depth = (depth + feed * h).clamp(max=cfg.length_m)
            feed_sum += feed
            thrust_sum += cfg.thrust_n * zone.resistance.mean(-1) * (feed / REF_FEED_M_S) ** THRUST_FEED_EXPONENT
            fraction_sum += fraction
        engaged = self.engaged_m(entry, axis, depth, patient_idx)
        return DrillStep(
            depth_m=depth,
            feed_m_s=(feed_sum / substeps).clamp(max=cfg.max_feed_m_s),  # the clamp guards rounding only
            thrust_n=thrust_sum / substeps,
            feed_fraction=fraction_sum / substeps,
            engaged_m=engaged,
            lateral=self.lateral_factor(engaged),
        )
