"""Patients: CT and label volumes, procedural phantoms, loaders, derived surfaces, the cache."""

from sim.anatomy.derive import derive
from sim.anatomy.loaders import load_dicom, load_nifti
from sim.anatomy.patient import Patient
from sim.anatomy.phantom import make_phantom
from sim.anatomy.prepare import prepare_patient

__all__ = ["Patient", "derive", "load_dicom", "load_nifti", "make_phantom", "prepare_patient"]
