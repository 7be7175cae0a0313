"""Small us_nav set-ups for tests: 2 mm phantoms, few environments, short runs."""

from __future__ import annotations

from pathlib import Path

import yaml

from sim.robot.safety import SafetyLimits

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


# Safety limits for monitor tests: a 20 x 20 x 20 cm box below the anchor, 0.1 m/s, 20 N.
LIMITS = SafetyLimits(
    (-0.1, -0.2, -0.1),
    (0.1, 0.0, 0.1),
    max_speed_m_s=0.1,
    max_angular_speed_rad_s=1.0,
    stop_speed_m_s=0.2,
    max_force_n=20.0,
)
