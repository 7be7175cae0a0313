"""Fill a patient's derived data: skin surface, vertebra landmarks, pedicle-screw plans and meshes."""

from __future__ import annotations

from sim.anatomy.landmarks import vertebra_landmarks
from sim.anatomy.meshes import bone_meshes
from sim.anatomy.patient import Patient
from sim.anatomy.plans import screw_plans
from sim.anatomy.surface import body_mesh, skin_surface
from sim.errors import require

# np.gradient of the skin height map needs 2 voxels per axis; its smoothing and the meshes'
# marching cubes on the padded, blurred masks need a few more to find a surface at all.
MIN_VOXELS_PER_AXIS = 4


def check_derivable(shape: tuple[int, ...], what: str) -> None:
    """`InputError` naming `what` unless a volume of `shape` has enough voxels along each axis to derive from."""
    require(
        len(shape) == 3 and min(shape) >= MIN_VOXELS_PER_AXIS,
        what,
        f"at least {MIN_VOXELS_PER_AXIS} voxels along each axis for surface and landmark derivation",
        f"shape {tuple(int(n) for n in shape)}",
    )


def derive(patient: Patient, meshes: bool = True) -> Patient:
    """Set `patient.skin`, `patient.landmarks`, `patient.plans` and (if `meshes`) `patient.meshes` in place.

    `meshes` holds one trimesh per bone structure plus "body" (patient frame, metres); skip
    them (`meshes=False`) when only the renderer and the probe placement need the patient.
    Returns the same patient; `InputError` for a volume too small to derive from.
    """
    check_derivable(patient.shape, f"patient '{patient.name}'")
    patient.skin = skin_surface(patient)
    patient.landmarks = vertebra_landmarks(patient)
    patient.plans = screw_plans(patient)
    if meshes:
        patient.meshes = {**bone_meshes(patient), "body": body_mesh(patient)}
    return patient
