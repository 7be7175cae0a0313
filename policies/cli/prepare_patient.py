"""Prepare and cache a patient from a CT (NIfTI file or DICOM folder) or the procedural phantom.

    sonolab-prepare-patient ct.nii.gz --labels seg.nii.gz --tissue-types tissue_types/
    sonolab-prepare-patient dicom_series/ --spacing 1.0
    sonolab-prepare-patient dicom_folder/ --series IM0001.dcm   # one of several series
    sonolab-prepare-patient --labels seg.nii.gz                  # label-only
    sonolab-prepare-patient --phantom --seed 3
    sonolab-prepare-patient --phantom --seed 0 --plans          # with the pedicle-screw plans

Prints a short summary (with --plans, first a table of the pedicle-screw plans, one row per level
and side); the last line is the cache entry's path. Exit code 2 on bad input.

The `sonolab-prepare-patient` command (installed sonolab, any folder) and scripts/prepare_patient.py run `main`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sim.anatomy.plans import plan_report
from sim.anatomy.prepare import prepare
from sim.errors import InputError

# The plan table: (report key, header, format) per column; headers carry the units.
PLAN_COLUMNS = (
    ("level", "level", "{}"),
    ("side", "side", "{}"),
    ("transverse_deg", "transverse deg", "{:.1f}"),
    ("sagittal_deg", "sagittal deg", "{:.1f}"),
    ("isthmus_width_mm", "isthmus mm", "{:.1f}"),
    ("screw_diameter_mm", "screw mm", "{:.1f}"),
    ("length_mm", "length mm", "{:.1f}"),
    ("clearance_mm", "clearance mm", "{:.2f}"),
    ("within_range", "in range", "{}"),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ct", nargs="?", help="CT: a NIfTI file, or a folder holding one DICOM series")
    ap.add_argument("--series", help="with a DICOM folder holding several series: a file name of the one to read")
    ap.add_argument("--labels", help="TotalSegmentator multilabel NIfTI or folder of <name>.nii.gz masks")
    ap.add_argument("--tissue-types", help="folder of TotalSegmentator tissue_types masks (any grid)")
    ap.add_argument("--body", help="body mask NIfTI (any grid)")
    ap.add_argument(
        "--class-map", help="class_map.json / YAML naming the label ids (default: TotalSegmentator v2 total)"
    )
    ap.add_argument("--spacing", type=float, help="resample to this isotropic voxel size in mm")
    ap.add_argument("--name", help="patient name")
    ap.add_argument("--split", choices=("train", "test"), default="train")
    ap.add_argument("--phantom", action="store_true", help="the procedural phantom instead of a CT")
    ap.add_argument("--seed", type=int, default=0, help="phantom seed")
    ap.add_argument("--no-meshes", action="store_true", help="skip bone and body meshes")
    ap.add_argument("--plans", action="store_true", help="print the pedicle-screw plans (one row per level and side)")
    ap.add_argument("--cache-dir", help="cache folder (default $SONOLAB_CACHE or ~/.cache/sonolab/patients)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    return ap.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> dict:
    """The `prepare_patient` config the command line describes."""
    common = {"name": args.name, "split": args.split, "meshes": not args.no_meshes}
    if args.phantom:
        if args.ct or args.labels:
            raise InputError("--phantom: expected no CT or --labels with the procedural phantom")
        return {"source": "phantom", "seed": args.seed, "spacing_mm": args.spacing or 1.0, **common}
    loader = {
        "labels": args.labels,
        "tissue_types": args.tissue_types,
        "body": args.body,
        "class_map": args.class_map,
        "spacing_mm": args.spacing,
        **common,
    }
    if args.ct and Path(args.ct).is_dir():
        return {"source": "dicom", "series_dir": args.ct, "series": args.series, **loader}
    if args.series:
        raise InputError("--series: expected a DICOM folder as the CT path")
    if not args.ct and not args.labels:
        raise InputError("command line: expected a CT path, --labels, or --phantom")
    return {"source": "nifti", "ct": args.ct, **loader}


def plan_table(rows: list[dict]) -> list[str]:
    """`sim.anatomy.plans.plan_report` rows as aligned text lines, a header first (text left, numbers right)."""
    cells = [[header for _, header, _ in PLAN_COLUMNS]]
    for row in rows:
        values = {
            **row,
            "level": row["level"].removeprefix("vertebrae_"),
            "within_range": "yes" if row["within_range"] else "NO",
        }
        cells.append([fmt.format(values[key]) for key, _, fmt in PLAN_COLUMNS])
    widths = [max(len(r[c]) for r in cells) for c in range(len(PLAN_COLUMNS))]
    text = {"level", "side"}
    return [
        "  ".join(
            cell.ljust(w) if key in text else cell.rjust(w) for cell, w, (key, _, _) in zip(r, widths, PLAN_COLUMNS)
        ).rstrip()
        for r in cells
    ]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = prepare(config_from_args(args), cache_dir=args.cache_dir, progress=not args.quiet)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    p = result.patient
    if args.plans:
        print("\n".join(plan_table(plan_report(p.plans))) if p.plans else "plans:      none found")
    spacing_mm = ", ".join(f"{s * 1e3:.3g}" for s in p.spacing)
    lumbar = [n.removeprefix("vertebrae_") for n in p.landmarks]
    print(f"patient:    {p.name} ({p.split})")
    print(f"shape:      {p.shape} voxels at ({spacing_mm}) mm, CT {'yes' if p.ct is not None else 'no'}")
    names = sorted(p.structure_names)
    print(f"structures: {len(names)} ({', '.join(names[:8])}{', ...' if len(names) > 8 else ''})")
    print(f"lumbar:     {', '.join(lumbar) if lumbar else 'none found'}")
    print(f"cache:      {'hit' if result.from_cache else 'written'}")
    print(result.path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
