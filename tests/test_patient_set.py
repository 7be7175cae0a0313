"""Patient sets: seed ranges, the held-out split, and bad sets named."""

from __future__ import annotations

import pytest

from policies.workflow import compose_config
from sim.anatomy.patient_set import split_configs
from sim.config import to_container
from sim.errors import InputError

PHANTOMS = {"common": {"source": "phantom", "spacing_mm": 2.0}}


def seeds(configs: list[dict]) -> list[int]:
    return [c["seed"] for c in configs]


def test_seed_ranges_expand_and_keep_the_common_settings():
    patient_set = {**PHANTOMS, "train": [{"seeds": [10, 13]}, {"seed": 20}], "test": [{"seeds": [100, 102]}]}
    train = split_configs(patient_set, "train")
    assert seeds(train) == [10, 11, 12, 20] and all(c["spacing_mm"] == 2.0 and c["split"] == "train" for c in train)
    assert seeds(split_configs(patient_set, "test")) == [100, 101]
    for bad in ([3, 3], [5], [1.0, 4.0], "0-4"):
        with pytest.raises(InputError, match="patient set 'train' seeds"):
            split_configs({**PHANTOMS, "train": [{"seeds": bad}], "test": [{"seed": 9}]}, "train")
    with pytest.raises(InputError, match="seed or seeds, not both"):
        split_configs({**PHANTOMS, "train": [{"seeds": [0, 2], "seed": 1}], "test": [{"seed": 9}]}, "train")


def test_held_out_patients_are_never_train_patients():
    overlap = {**PHANTOMS, "train": [{"seeds": [0, 8]}], "test": [{"seed": 5}]}
    for split in ("train", "test"):  # refused whichever split is asked for: the set itself is wrong
        with pytest.raises(InputError, match="patient set test patients: expected none that is also a train patient"):
            split_configs(overlap, split)
    assert seeds(split_configs({**overlap, "held_out": False}, "test")) == [5]
    with pytest.raises(InputError, match="patient set held_out"):
        split_configs({**overlap, "held_out": "no"}, "test")
    # the shipped sets: the phantom families hold out their test seeds, the real CT says it is in both
    for name in ("phantom", "phantom_family"):
        patient_set = to_container(compose_config([f"patient={name}"]).patient)
        train, test = (set(seeds(split_configs(patient_set, s))) for s in ("train", "test"))
        assert train and test and not train & test
    assert len(train) >= 64  # phantom_family: enough bodies that an image policy cannot learn each one
    real = to_container(compose_config(["patient=totalseg_example"]).patient)
    assert real["held_out"] is False and split_configs(real, "test")[0]["source"] == "nifti"


def test_us_nav_trains_on_the_phantom_family_by_default():
    assert compose_config([]).patient.common.spacing_mm == 1.5  # task=us_nav, the default task
    assert compose_config(["patient=phantom"]).patient.common.spacing_mm == 1.0  # the command line wins
    assert compose_config(["task=us_nav_state"]).patient.common.spacing_mm == 1.0
