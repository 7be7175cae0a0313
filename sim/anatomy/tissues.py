"""Acoustic tissue classes: the vocabulary shared by patients and the ultrasound renderer.

Every patient's `tissue` volume holds indices into `TISSUE_CLASSES`; the renderer's
`TissueTable` holds one row of acoustic properties per class in the same order.
"""

TISSUE_CLASSES: tuple[str, ...] = (
    "air",  # outside the body, bowel gas
    "water",  # coupling gel, cerebrospinal fluid, cysts, bladder urine
    "fat",
    "skin",
    "muscle",
    "soft_tissue",  # generic parenchyma (spleen, pancreas, bowel wall, spinal cord)
    "liver",
    "kidney",
    "blood",
    "cartilage",  # intervertebral discs, costal cartilage
    "bone",  # cortical bone (vertebrae, pelvis, ribs)
    "lung",
    "fascia",  # dense connective tissue: fascia, aponeuroses, fibrous septa in fat and muscle
)

TISSUE_ID: dict[str, int] = {name: i for i, name in enumerate(TISSUE_CLASSES)}
