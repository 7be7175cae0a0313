"""`TissueTable`: acoustic properties per tissue class, from config (conf/tissue/*.yaml)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch
import yaml

from sim.anatomy.tissues import TISSUE_CLASSES
from sim.config import build
from sim.errors import InputError
from sim.resources import conf_dir

DEFAULT_TISSUE_TABLE = conf_dir() / "tissue" / "default.yaml"
FIELDS = ("impedance_mrayl", "attenuation_db_cm_mhz", "echogenicity_db", "scatterer_density")


@dataclass(frozen=True)
class TissueProperties:
    """Acoustic properties of one tissue class; units in the field names (see default.yaml).

    scatterer_density: the fraction of speckle cells (about a sample each) that hold a scatterer:
    1 gives fully developed speckle (Rayleigh envelope); below 1 fewer, brighter scatterers at
    the same mean echo power (`speckle.sparse_scatterers`).
    """

    impedance_mrayl: float
    attenuation_db_cm_mhz: float
    echogenicity_db: float | None  # None: anechoic (no scatterers)
    scatterer_density: float = 1.0


class TissueTable:
    """One `TissueProperties` per class in `TISSUE_CLASSES` order."""

    def __init__(self, rows: Mapping[str, Mapping[str, float | None]], source: str = "tissue table") -> None:
        missing = [c for c in TISSUE_CLASSES if c not in rows]
        unknown = [c for c in rows if c not in TISSUE_CLASSES]
        if missing or unknown:
            raise InputError(
                f"{source}: expected one row per tissue class {list(TISSUE_CLASSES)}; "
                f"missing {missing}, unknown {unknown}"
            )
        self.rows: dict[str, TissueProperties] = {}
        for name in TISSUE_CLASSES:
            row = dict(rows[name])
            props = build(TissueProperties, row, f"{source} {name}")  # every field, nothing else
            sane = props.impedance_mrayl > 0 and props.attenuation_db_cm_mhz >= 0
            if not (sane and 0 < props.scatterer_density <= 1):
                raise InputError(
                    f"{source} {name}: expected impedance_mrayl > 0, attenuation_db_cm_mhz >= 0 and "
                    f"scatterer_density in (0, 1], got {row}"
                )
            self.rows[name] = props

    @classmethod
    def load(cls, path: str | Path = DEFAULT_TISSUE_TABLE, overrides: Mapping | None = None) -> "TissueTable":
        """Read a YAML table and apply `overrides` ({class: {field: value}}) on top."""
        rows = yaml.safe_load(Path(path).read_text())
        for name, fields in (overrides or {}).items():
            if name not in rows:
                raise InputError(f"tissue override {name!r}: expected a tissue class in {list(TISSUE_CLASSES)}")
            rows[name] = {**rows[name], **fields}
        return cls(rows, source=str(path))

    def replace(self, **overrides: Mapping[str, float | None]) -> "TissueTable":
        """A copy with per-class field overrides, e.g. `table.replace(bone={"impedance_mrayl": 6.5})`."""
        rows = {name: vars(p).copy() for name, p in self.rows.items()}
        for name, fields in overrides.items():
            if name not in rows:
                raise InputError(f"tissue override {name!r}: expected a tissue class in {list(TISSUE_CLASSES)}")
            rows[name].update(fields)
        return TissueTable(rows)

    def as_tensor(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """(C, 4) float32: impedance (MRayl), attenuation (dB/cm/MHz), echo amplitude (linear),
        scatterer density (0..1].

        The echo amplitude is 10^(echogenicity_db / 20), or 0 for anechoic classes.
        """
        vals = [
            [
                p.impedance_mrayl,
                p.attenuation_db_cm_mhz,
                0.0 if p.echogenicity_db is None else 10 ** (p.echogenicity_db / 20),
                p.scatterer_density,
            ]
            for p in self.rows.values()
        ]
        return torch.tensor(vals, dtype=torch.float32, device=device)
