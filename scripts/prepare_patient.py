"""Prepare and cache a patient from a CT (NIfTI file or DICOM folder) or the procedural phantom.

A thin wrapper: the code, its usage and options are in policies/cli/prepare_patient.py, which is also the
`sonolab-prepare-patient` command of an installed sonolab.
"""

import sys

from policies.cli.prepare_patient import main

if __name__ == "__main__":
    sys.exit(main())
