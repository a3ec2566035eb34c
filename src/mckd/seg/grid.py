"""The voxel grid a model sees: one orientation and one spacing, by MONAI's transforms, and the way back.

``mckd prepare seg`` puts every case on one grid (MONAI ``Orientation`` to
the plan's axis codes, then ``Spacing`` to its voxel size: trilinear for
images, nearest for labels and masks); ``mckd predict`` and ``mckd evaluate
--data`` do the same to a new case, and bring the model's probabilities back
onto the case's own grid with MONAI ``SpatialResample`` (the file's affine and
shape as the destination), which is what MONAI's ``Invertd`` does for these
two transforms. Nothing here resamples by hand.

Arrays are ``[X, Y, Z]`` (or ``[C, X, Y, Z]``) in the NIfTI file's voxel order;
affines are NIfTI's voxel -> RAS+ world (mm).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch

from mckd.errors import DataError

AXIS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))  # NIfTI's world axes, as MONAI names them


@dataclass(frozen=True)
class GridPlan:
    """Where every case is put before the model sees it.

    Attributes:
        orientation: axis codes (``RAS``, ``LPS``, ...) or ``""`` to keep each file's own axes.
        spacing: voxel size in mm ``(x, y, z)`` on the reoriented axes, or ``()`` to keep each case's own.
    """

    orientation: str = "RAS"
    spacing: tuple[float, ...] = ()

    def to_json(self) -> dict[str, object]:
        return {"orientation": self.orientation, "spacing": list(self.spacing)}

    @staticmethod
    def from_json(record: Mapping[str, object] | None) -> "GridPlan":
        if not record:
            return GridPlan("", ())
        return GridPlan(str(record.get("orientation", "") or ""), tuple(float(s) for s in record.get("spacing", []) or []))

    def describe(self) -> str:
        spacing = "x".join(f"{s:g}" for s in self.spacing) + " mm" if self.spacing else "each case's own spacing"
        orientation = f"{self.orientation} orientation" if self.orientation else "the files' own orientation"
        return f"{spacing}, {orientation}"


def check_orientation(codes: str) -> str:
    """Upper-case axis codes, one of L/R, P/A, I/S each (or "" to keep the files' axes)."""
    codes = codes.upper()
    if codes in ("", "NONE"):
        return ""
    axes = sorted(i for c in codes for i, pair in enumerate(AXIS_LABELS) if c in pair)
    if len(codes) != 3 or axes != [0, 1, 2]:
        raise DataError(f"orientation {codes!r} must be three axis codes, one of L/R, P/A and I/S each (e.g. RAS), "
                        "or none")
    return codes


def spacing_of(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size in mm along each voxel axis of ``affine`` (the column norms)."""
    return tuple(float(v) for v in np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0)))  # type: ignore[return-value]


def _meta(array: np.ndarray, affine: np.ndarray) -> torch.Tensor:
    from monai.data import MetaTensor

    data = torch.from_numpy(np.ascontiguousarray(array))
    return MetaTensor(data if data.dim() == 4 else data[None], affine=torch.as_tensor(affine, dtype=torch.float64))


def _transforms(plan: GridPlan, mode: str) -> list:
    from monai.transforms import Orientation, Spacing

    steps = []
    if plan.orientation:
        steps.append(Orientation(axcodes=plan.orientation, labels=AXIS_LABELS))
    if plan.spacing:
        steps.append(Spacing(pixdim=plan.spacing, mode=mode, padding_mode="border" if mode != "nearest" else "zeros",
                             dtype=np.float32))
    return steps


def to_plan_grid(array: np.ndarray, affine: np.ndarray, plan: GridPlan, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """``array`` ``[X, Y, Z]`` on ``affine``'s grid -> (array on the plan's grid, its affine).

    ``mode``: ``bilinear`` (trilinear in 3D) for intensities, ``nearest`` for labels and masks.
    """
    steps = _transforms(plan, mode)
    if not steps:
        return array, np.asarray(affine, dtype=np.float64)
    if plan.spacing:  # the volume the resampling would make, checked before it is made
        from mckd.bounds import BOUNDS

        voxels = float(np.prod(array.shape[:3])) * float(np.prod(spacing_of(affine)) / np.prod(plan.spacing))
        if voxels > BOUNDS["voxels"].high():
            own = "x".join(f"{s:g}" for s in spacing_of(affine))
            raise DataError(f"a volume of shape {tuple(array.shape[:3])} at {own} mm would become {voxels:,.0f} voxels "
                            f"on the grid of {plan.describe()}; at most {BOUNDS['voxels'].high():,} "
                            f"({BOUNDS['voxels'].why}): choose a larger --spacing")
    dtype = array.dtype
    image = _meta(array.astype(np.float32), affine)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI's deprecation notices about its own defaults
        for step in steps:
            image = step(image)
    out = image[0].numpy()
    if mode == "nearest":
        out = np.rint(out).astype(dtype)
    return out, image.affine.numpy().astype(np.float64)


def same_grid(affine_a: np.ndarray, shape_a: Sequence[int], affine_b: np.ndarray, shape_b: Sequence[int]) -> bool:
    """Whether two grids are the same voxels (shape equal, affines equal to 1e-4 mm)."""
    return tuple(shape_a) == tuple(shape_b) and np.allclose(affine_a, affine_b, atol=1e-4)


def to_file_grid(channels: np.ndarray, grid_affine: np.ndarray, file_affine: np.ndarray,
                 file_shape: Sequence[int], mode: str = "bilinear") -> np.ndarray:
    """Channels ``[C, *G]`` on the plan's grid -> ``[C, *file_shape]`` on the file's grid (MONAI).

    The inverse of :func:`to_plan_grid`: MONAI ``SpatialResample`` to the
    file's affine and shape; ``bilinear`` (trilinear) for probabilities,
    ``nearest`` for label maps.
    """
    if same_grid(grid_affine, channels.shape[1:], file_affine, file_shape):
        return channels
    import nibabel as nib
    from monai.transforms import Orientation, SpatialResample

    image = _meta(channels.astype(np.float32), grid_affine)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # a reorientation alone (axis flips, permutations) is undone exactly, without interpolating
        codes = "".join(nib.aff2axcodes(np.asarray(file_affine), labels=AXIS_LABELS))
        back = Orientation(axcodes=codes, labels=AXIS_LABELS)(image)
        if same_grid(back.affine.numpy(), back.shape[1:], file_affine, file_shape):
            return back.as_tensor().numpy() if hasattr(back, "as_tensor") else back.numpy()
        out = SpatialResample(mode=mode, padding_mode="border", dtype=np.float32)(
            image, dst_affine=torch.as_tensor(file_affine, dtype=torch.float64), spatial_size=tuple(int(s) for s in file_shape))
    result = out.numpy() if not hasattr(out, "as_tensor") else out.as_tensor().numpy()
    if tuple(result.shape[1:]) != tuple(file_shape):
        raise DataError(f"resampling back to the file's grid gave shape {tuple(result.shape[1:])}, expected "
                        f"{tuple(file_shape)}")
    return result


def median_spacing(spacings: Sequence[Sequence[float]]) -> tuple[float, float, float]:
    """The median voxel size per axis (nnU-Net's choice of target spacing), rounded to 1e-3 mm."""
    if not spacings:
        raise DataError("no case to take a median spacing from")
    return tuple(round(float(v), 3) for v in np.median(np.asarray(spacings, dtype=np.float64), axis=0))  # type: ignore[return-value]


def reoriented_spacing(affine: np.ndarray, orientation: str) -> tuple[float, float, float]:
    """A case's voxel size along the axes of ``orientation`` (its own axes when "")."""
    zooms = spacing_of(affine)
    if not orientation:
        return zooms
    import nibabel as nib

    ornt = nib.orientations.io_orientation(np.asarray(affine))  # file axis -> world axis
    target = nib.orientations.axcodes2ornt(orientation, labels=AXIS_LABELS)
    out = [0.0, 0.0, 0.0]
    for file_axis, (world_axis, _) in enumerate(ornt):
        target_axis = int(next(i for i, (w, _) in enumerate(target) if int(w) == int(world_axis)))
        out[target_axis] = zooms[file_axis]
    return tuple(out)  # type: ignore[return-value]
