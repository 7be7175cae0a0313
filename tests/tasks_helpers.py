"""Small us_nav set-ups for tests: 2 mm phantoms, few environments, short runs."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def small_patient_set() -> dict:
    """conf/patient/phantom.yaml at 2 mm with two training phantoms and one test phantom."""
    pset = yaml.safe_load((ROOT / "conf" / "patient" / "phantom.yaml").read_text())
    pset["common"]["spacing_mm"] = 2.0
    pset["train"] = pset["train"][:2]
    pset["test"] = pset["test"][:1]
    return pset


# Hydra overrides for scripts/train.py and play.py runs in tests.
SMALL_RUN = ["patient.common.spacing_mm=2.0", "patient.train=[{seed: 0},{seed: 1}]", "patient.test=[{seed: 100}]"]
