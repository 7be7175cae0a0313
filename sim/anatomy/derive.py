"""Fill a patient's derived data: skin surface, vertebra landmarks and meshes."""

from __future__ import annotations

from sim.anatomy.landmarks import vertebra_landmarks
from sim.anatomy.meshes import bone_meshes
from sim.anatomy.patient import Patient
from sim.anatomy.surface import body_mesh, skin_surface


def derive(patient: Patient, meshes: bool = True) -> Patient:
    """Set `patient.skin`, `patient.landmarks` and (if `meshes`) `patient.meshes` in place.

    `meshes` holds one trimesh per bone structure plus "body" (patient frame, metres); skip
    them (`meshes=False`) when only the renderer and the probe placement need the patient.
    Returns the same patient.
    """
    patient.skin = skin_surface(patient)
    patient.landmarks = vertebra_landmarks(patient)
    if meshes:
        patient.meshes = {**bone_meshes(patient), "body": body_mesh(patient)}
    return patient
