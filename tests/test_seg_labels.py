"""Label sets as declared: classes, nested regions, BraTS conventions, contradictions refused, metrics per target."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mckd.seg.labels import (
    CONVENTIONS,
    check_declared_names,
    choose_brats_convention,
    class_map,
    from_msd_labels,
    from_nnunet_labels,
    load_label_file,
)
from mckd.errors import ConfigError, DataError
from mckd.report import table1
from mckd.tasks.segmentation import SegmentationTask, decode_regions, resolve_head, target_masks

MSD = {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"}
NNUNET_REGIONS = {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": 3}


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 1.0 if a.sum() + b.sum() == 0 else 2 * float((a & b).sum()) / float(a.sum() + b.sum())


def test_nnunet_region_based_labels_become_regions_decoded_by_regions_class_order():
    # KiTS23's declaration: kidney [1, 2, 3], masses [2, 3], tumour 2; regions_class_order [1, 3, 2]
    scheme = from_nnunet_labels({"background": 0, "kidney": [1, 2, 3], "masses": [2, 3], "tumor": 2}, [1, 3, 2], "kits")
    assert [r.name for r in scheme.regions] == ["kidney", "masses", "tumor"]
    regions = torch.zeros(1, 3, 4, dtype=torch.bool)
    regions[0, 0, :3] = True  # kidney at voxels 0-2
    regions[0, 1, 1:3] = True  # masses at 1-2
    regions[0, 2, 2] = True  # tumour at 2
    labels = decode_regions(regions, scheme)
    # nnU-Net writes 1 where kidney, then 3 where masses, then 2 where tumour: file values 1, 3, 2, 0
    assert scheme.to_file_values(labels.numpy())[0].tolist() == [1, 3, 2, 0]


def test_region_based_labels_need_regions_class_order():
    with pytest.raises(DataError, match="need 'regions_class_order'"):
        from_nnunet_labels(NNUNET_REGIONS, None, "dataset.json")
    with pytest.raises(DataError, match="writes 1 for region 'tumor core', which holds \\[2, 3\\]"):
        from_nnunet_labels(NNUNET_REGIONS, [1, 1, 3], "dataset.json")


def test_msd_labels_map_onto_brats_conventions_by_the_tissues_their_names_declare():
    msd = from_msd_labels(MSD, "dataset.json")
    assert msd.tissues == ("background", "oedema", "core", "enhancing")
    lookup = class_map(msd, CONVENTIONS["brats2018"])
    msd_file = np.array([0, 1, 2, 3])
    # MSD 1 edema -> BraTS 2018 value 2; 2 non-enhancing -> 1; 3 enhancing -> 4
    assert CONVENTIONS["brats2018"].to_file_values(lookup[msd.to_internal(msd_file)]).tolist() == [0, 2, 1, 4]
    nnunet = from_nnunet_labels(NNUNET_REGIONS, [1, 2, 3], "dataset.json")
    assert class_map(nnunet, msd).tolist() == [0, 1, 2, 3]  # nnU-Net's BraTS numbering is MSD's


def test_labels_without_plain_tissue_names_are_never_matched_to_others():
    organs = from_nnunet_labels({"background": 0, "liver": 1, "tumour": 2}, None, "dataset.json")
    assert organs.tissues == ()
    with pytest.raises(DataError, match="are not the run's brats2018"):
        class_map(organs, CONVENTIONS["brats2018"])


def test_a_convention_that_swaps_the_declared_tissues_is_refused():
    # the reported bug: nnU-Net / MSD labelled data forced through brats2023 read oedema as necrosis
    with pytest.raises(DataError, match="declares label 1 as 'edema', but the brats2023 convention reads 1 as necrotic"):
        check_declared_names(CONVENTIONS["brats2023"], {0: "background", 1: "edema", 2: "non-enhancing tumor"}, "x")
    check_declared_names(CONVENTIONS["msd_brats"], {0: "background", 1: "edema", 2: "non-enhancing tumor",
                                                    3: "enhancing tumour"}, "x")


@pytest.mark.parametrize("values,naming,expected", [
    ({0, 1, 2, 4}, "brats2018", "brats2018"),
    ({0, 1, 2, 3, 4}, "brats2018", "brats2013"),  # a held-out case with label 3 (old BraTS) is read, not refused
    ({0, 1, 2, 3}, "brats2023", "brats2023"),
])
def test_brats_conventions_are_chosen_only_where_the_values_found_make_them_certain(values, naming, expected):
    scheme, reason = choose_brats_convention({"seg.nii.gz": values}, naming)
    assert scheme.name == expected and "labels" in reason


@pytest.mark.parametrize("values,naming,message", [
    ({0, 1, 2, 3}, "brats2018", "--labels brats2013 or --labels brats2023"),
    ({0, 1, 2, 3, 4}, "brats2023", "--labels brats2024"),
    ({0, 1, 7}, "brats2018", "seg.nii.gz: label values \\[7\\] are in no BraTS convention"),
])
def test_ambiguous_brats_labels_ask_for_a_declaration(values, naming, message):
    with pytest.raises(DataError, match=message):
        choose_brats_convention({"seg.nii.gz": values}, naming)


def test_a_yaml_label_file_in_nnunet_notation(tmp_path):
    path = tmp_path / "labels.yaml"
    path.write_text("labels:\n  background: 0\n  tumour: [1, 2]\n  core: [2]\nregions_class_order: [1, 2]\n")
    scheme = load_label_file(path)
    assert [r.name for r in scheme.regions] == ["tumour", "core"] and scheme.file_values() == [0, 1, 2]
    path.write_text("labels: {background: 0}\nextra: 1\n")
    with pytest.raises(DataError, match="unknown keys \\['extra'\\]"):
        load_label_file(path)


def test_the_head_follows_the_declaration():
    msd = from_msd_labels(MSD, "dataset.json")
    regions = from_nnunet_labels(NNUNET_REGIONS, [1, 2, 3], "dataset.json")
    assert resolve_head("auto", msd) == "labels" and resolve_head("auto", regions) == "regions"
    with pytest.raises(ConfigError, match="declare no regions"):
        resolve_head("regions", msd)


def test_region_metrics_of_declared_regions_equal_dice_by_hand():
    scheme = from_nnunet_labels(NNUNET_REGIONS, [1, 2, 3], "dataset.json")
    task = SegmentationTask(3, head="regions", roi=[8, 8, 8], scheme=scheme)
    assert task.metric_names == ("dice_mean", "dice_whole_tumor", "dice_tumor_core", "dice_enhancing_tumor",
                                 "hd95_whole_tumor", "hd95_tumor_core", "hd95_enhancing_tumor")
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 4, size=(1, 8, 8, 8))
    pred = truth.copy()
    pred[0, :3] = rng.integers(0, 4, size=(3, 8, 8))
    metrics = task.label_metrics(torch.from_numpy(pred), torch.from_numpy(truth))
    for name, values in (("whole_tumor", (1, 2, 3)), ("tumor_core", (2, 3)), ("enhancing_tumor", (3,))):
        expected = _dice(np.isin(pred, values), np.isin(truth, values))
        assert metrics[f"dice_{name}"].item() == pytest.approx(expected, abs=1e-6)
    assert target_masks(torch.from_numpy(truth), scheme).shape == (1, 3, 8, 8, 8)


def test_class_metrics_are_per_class_but_background():
    msd = from_msd_labels(MSD, "dataset.json")
    task = SegmentationTask(4, head="labels", roi=[8, 8, 8], scheme=msd)
    assert task.targets == ("edema", "non-enhancing tumor", "enhancing tumour")
    truth = np.zeros((1, 6, 6, 6), np.int64)
    truth[0, 1:4, 1:4, 1:4] = 1
    truth[0, 2, 2, 2] = 3
    pred = np.zeros_like(truth)
    pred[0, 1:3, 1:4, 1:4] = 1
    metrics = task.label_metrics(torch.from_numpy(pred), torch.from_numpy(truth))
    assert metrics["dice_edema"].item() == pytest.approx(_dice(pred == 1, truth == 1))
    assert metrics["dice_non_enhancing_tumor"].item() == 1.0  # empty in both
    assert metrics["dice_enhancing_tumour"].item() == 0.0


def test_table1_lists_any_targets_and_leaves_undefined_rows_out_of_the_average():
    rows = [{"subset": "a", "dice_liver": 0.5, "hd95_liver": 2.0},
            {"subset": "b", "dice_liver": None, "hd95_liver": None},
            {"subset": "a+b", "dice_liver": 0.7, "hd95_liver": 4.0}]
    text = table1(rows, ["a", "b"], ["liver"])
    assert "| a | b | Dice liver | Dice mean | HD95 liver |" in text
    assert "| ○ | ● | – | – | – |" in text
    assert "**60.00** | **60.00** | **3.00**" in text
