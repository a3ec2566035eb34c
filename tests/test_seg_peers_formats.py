"""Each segmentation peer of Table 1 on the field's formats: trained on an MSD and a nnU-Net v2 folder, it writes
predictions of cases it never saw on their input grid, in the format's own label values.

The folders are the real shared cases (``seg_helpers``: 3 mm, cases lacking T1 and T2 among them). MSD's Task01
labels are classes (the softmax head); the nnU-Net v2 folder declares BraTS regions (the sigmoid head), so each
peer runs under both heads.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import ROOT
from seg_helpers import heldout_cases, seg_folders, training_cases, write_nnunet  # noqa: F401 (fixture)

pytestmark = [pytest.mark.skipif(__import__("importlib").util.find_spec("monai") is None, reason="needs monai"),
              pytest.mark.usefixtures("one_torch_thread")]

PEERS = ("uhved", "robust_mseg", "mmformer", "rfnet", "gss")
SMALL = {"mmformer": ["method.embed_dim=16", "method.mlp_dim=32", "method.heads=2"]}
CASES = [case.name for case in heldout_cases()]


@pytest.fixture(scope="module")
def folders(seg_folders, tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """format -> (the prepared training cache, the held-out folder in that format)."""
    from mckd.cli import main

    root = tmp_path_factory.mktemp("peer_formats")
    train_nnunet = write_nnunet(root / "Dataset002_train", training_cases())
    out = {}
    for kind, source, held in (("msd", seg_folders["train_msd"], seg_folders["held_msd"]),
                               ("nnunet", train_nnunet, seg_folders["held_nnunet"])):
        cache = root / f"cache_{kind}"
        assert main(["prepare", "seg", str(source), str(cache), "--allow-missing", "--workers", "1",
                     "--no-progress"]) == 0
        out[kind] = (cache, held)
    return out


def held_inputs(folder: Path, kind: str, case: str) -> Path:
    return folder / "imagesTr" / (f"{case}.nii.gz" if kind == "msd" else f"{case}_0000.nii.gz")


@pytest.mark.parametrize("kind", ["msd", "nnunet"])
@pytest.mark.parametrize("name", PEERS)
def test_a_peer_trains_on_the_format_and_predicts_unseen_cases_on_their_grid_in_its_labels(
        folders, tmp_path, name, kind):
    from mckd.cli import main
    from mckd.config import config_from_dict, load_raw
    from mckd.experiment import method_config
    from mckd.train import train

    cache, held = folders[kind]
    config = config_from_dict(method_config(load_raw(ROOT / "configs" / "table1_cpu.yaml"), name, [
        f"data.cache={cache}", "data.modalities=[]", "data.downsample=2", "data.crop=[16,16,16]",
        "data.val_crops=1", "model.widths=[4,8,16]", "train.iterations=2", "train.log_every=1",
        "train.progress=false", "task.overlap=0.0", "method.optimizer=config", *SMALL.get(name, [])]))
    train(config, tmp_path / "run")
    assert main(["predict", str(tmp_path / "run"), "--input", str(held), "--output", str(tmp_path / "out"),
                 "--device", "cpu", "--no-progress"]) == 0
    for case in CASES:
        written, reference = nib.load(str(tmp_path / "out" / f"{case}.nii.gz")), nib.load(str(held_inputs(held, kind, case)))
        assert written.shape == reference.shape[:3] and np.allclose(written.affine, reference.affine), case
        assert set(np.unique(np.asanyarray(written.dataobj)).tolist()) <= {0, 1, 2, 3}, case  # MSD's / nnU-Net's values
