"""Prepare and cache a patient from a CT (NIfTI file or DICOM folder) or the procedural phantom.

    python scripts/prepare_patient.py ct.nii.gz --labels seg.nii.gz --tissue-types tissue_types/
    python scripts/prepare_patient.py dicom_series/ --spacing 1.0
    python scripts/prepare_patient.py dicom_folder/ --series IM0001.dcm   # one of several series
    python scripts/prepare_patient.py --labels seg.nii.gz            # label-only
    python scripts/prepare_patient.py --phantom --seed 3

Prints a short summary; the last line is the cache entry's path. Exit code 2 on bad input.

The code is policies/cli/prepare_patient.py, also the `sonolab-prepare-patient` command of an installed sonolab.
"""

import sys

from policies.cli.prepare_patient import main

if __name__ == "__main__":
    sys.exit(main())
