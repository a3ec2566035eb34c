"""Readers of the field's formats and `mckd prepare seg`: MSD 4D, nnU-Net v2, BraTS folders, one cache, one grid."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mckd.cli import main
from mckd.errors import DataError
from mckd.seg.cache import CachedCase, read_dataset_record
from mckd.seg.cases import read_case_files
from mckd.seg.formats import canonical_sequence, detect_format
from seg_helpers import (  # noqa: F401 (fixtures)
    BRATS_TO_MSD,
    SEQUENCES,
    heldout_cases,
    seg_cache,
    seg_folders,
    to_values,
    training_cases,
    write_nnunet,
)


def test_the_usual_sequence_names_are_read_as_bratss_and_others_kept():
    assert [canonical_sequence(n) for n in ("FLAIR", "T1w", "t1gd", "T2w", "t2f", "t1n", "T1c", "ADC")] == [
        "flair", "t1", "t1ce", "t2", "flair", "t1", "t1ce", "adc"]


def test_an_msd_case_is_one_4d_file_whose_channels_the_description_names(seg_folders):
    found = detect_format(seg_folders["train_msd"])
    assert found.kind == "msd" and found.modalities == SEQUENCES
    assert found.channels["t1ce"] == "t1gd (channel 2)"
    files = found.cases(labelled=True)[0]
    case = read_case_files(files, found.modalities, found.declared)
    made = training_cases()[0]
    for sequence in SEQUENCES:
        assert np.array_equal(case.images[sequence], made.images[sequence])
    assert np.array_equal(case.labels, to_values(made.labels, BRATS_TO_MSD))  # declared classes = MSD values here


def test_a_zero_channel_of_a_4d_file_is_a_missing_sequence(seg_folders):
    found = detect_format(seg_folders["train_msd"])
    files = found.cases(labelled=True)[2]  # FLAIR and T1c only
    with pytest.raises(DataError, match=r"BRATS_003.nii.gz\[channel 1\] \(t1\) is empty.*--allow-missing"):
        read_case_files(files, found.modalities, found.declared)
    case = read_case_files(files, found.modalities, found.declared, allow_missing=True)
    assert case.missing == ["t1", "t2"] and sorted(case.images) == ["flair", "t1ce"]


def test_an_nnunet_case_without_a_channel_file_lacks_that_sequence(seg_folders):
    found = detect_format(seg_folders["held_nnunet"])
    assert found.kind == "nnunet" and [r.name for r in found.declared.regions] == ["whole tumor", "tumor core",
                                                                                   "enhancing tumor"]
    by_id = {c.case_id: c for c in found.cases(labelled=True)}
    assert by_id["HELD_002"].absent == ("t2",) and sorted(by_id["HELD_002"].images) == ["flair", "t1", "t1ce"]
    assert by_id["HELD_001"].images["t2"].path.endswith("HELD_001_0003.nii.gz")


def test_each_format_is_recognised_and_named(seg_folders):
    assert detect_format(seg_folders["held_brats"]).kind == "brats2018"
    flat = detect_format(seg_folders["test_msd"] / "imagesTs")  # channels from the dataset.json beside it
    assert flat.kind == "msd" and [c.case_id for c in flat.cases(labelled=False)][:2] == ["HELD_001", "HELD_002"]
    images = seg_folders["held_nnunet"] / "imagesTr"
    alone = images.parent.parent / "nnunet_images_alone"
    if not alone.exists():
        shutil.copytree(images, alone)
    with pytest.raises(DataError, match="no dataset.json beside it names their channels"):
        detect_format(alone)
    named = detect_format(alone, channels=["FLAIR", "T1", "T1c", "T2"])
    assert named.kind == "nnunet" and named.modalities == SEQUENCES


def test_prepare_seg_says_what_it_found_and_writes_one_cache(seg_cache: Path, seg_folders, capsys):
    record = read_dataset_record(seg_cache)
    assert record["format"] == "mckd-seg-cache" and record["source_format"]["kind"] == "msd"
    assert record["label_scheme"]["name"] == "msd_brats" and record["plan"] == {"orientation": "RAS",
                                                                                "spacing": [3.0, 3.0, 3.0]}
    out = seg_cache.parent / "again"
    assert main(["prepare", "seg", str(seg_folders["train_msd"]), str(out), "--allow-missing", "--workers", "1"]) == 0
    said = capsys.readouterr().out
    assert "found Medical Segmentation Decathlon" in said
    assert "t1ce <- t1gd (channel 2)" in said
    assert "labels (as declared in" in said and "1 edema, 2 non-enhancing tumor, 3 enhancing tumour" in said
    assert "grid: 3x3x3 mm, RAS orientation (the median over the cases; the cases have 2x2x2; 3x3x3 mm, 1 of 4 resampled)" in said
    assert "[4/4] BRATS_004: flair+t1ce, missing t1, t2" in said  # a line per case through a pipe


def test_a_case_at_another_spacing_is_resampled_onto_the_common_grid(seg_cache: Path):
    """The 2 mm case is cached at 3 mm: its labels there agree with nearest-neighbour sampling computed by hand."""
    case = CachedCase(seg_cache, "BRATS_004", SEQUENCES)
    assert case.meta["spacing"] == [3.0, 3.0, 3.0] and case.meta["original_shape"] == [120, 120, 78]
    made = training_cases()[3]
    grid_affine = np.asarray(case.meta["grid_affine"])
    assert np.allclose(np.abs(np.diag(grid_affine)[:3]), 3.0) and (np.diag(grid_affine)[:3] > 0).all()  # RAS
    (x0, x1), (y0, y1), (z0, z1) = case.meta["crop_box"]
    cached = np.asarray(case.labels())
    ijk = np.stack(np.meshgrid(np.arange(x0, x1), np.arange(y0, y1), np.arange(z0, z1), indexing="ij"), -1)
    world = ijk @ grid_affine[:3, :3].T + grid_affine[:3, 3]
    source = np.rint((world - made.affine[:3, 3]) @ np.linalg.inv(made.affine[:3, :3]).T).astype(int)
    inside = np.all((source >= 0) & (source < np.array(made.labels.shape)), axis=-1)
    expected = np.zeros(cached.shape, np.uint8)
    msd_to_internal = np.array([0, 2, 1, 3], np.uint8)  # msd_brats: MSD 1 oedema -> 2, 2 core -> 1, 3 -> 3
    sampled = to_values(made.labels, BRATS_TO_MSD)[tuple(source[inside].T)]
    expected[inside] = msd_to_internal[sampled]
    assert (cached == expected).mean() > 0.97  # nearest neighbour, up to ties at half-voxel positions
    restored = case.restore(cached)  # back on the 2 mm file grid
    assert restored.shape == made.labels.shape


def test_the_validation_case_has_every_sequence(seg_cache: Path):
    from mckd.seg.dataset import SegOptions, build_seg

    bundle = build_seg(SegOptions(cache=str(seg_cache), crop=[16, 16, 16], downsample=2), 0)
    val = bundle.info["cases"]["val"]
    assert all(CachedCase(seg_cache, c, SEQUENCES).present.all() for c in val)
    assert bundle.num_classes == 4 and bundle.facts["labels"]["name"] == "msd_brats"


def test_the_head_follows_the_prepared_declaration(seg_folders, tmp_path: Path):
    from mckd.build import build_experiment
    from mckd.config import apply_overrides, config_from_dict, load_raw

    from conftest import ROOT

    nnunet = write_nnunet(tmp_path / "Dataset002_train", training_cases()[:3], region_based=False)
    out = tmp_path / "cache"
    assert main(["prepare", "seg", str(nnunet), str(out), "--allow-missing", "--workers", "1", "--no-progress"]) == 0
    raw = load_raw(ROOT / "configs" / "brats_small_cpu.yaml")
    config = config_from_dict(apply_overrides(raw, [f"data.cache={out}", "data.crop=[16,16,16]", "data.downsample=2",
                                                    "model.widths=[4,8,16]"]))
    task = build_experiment(config).task
    assert task.head == "labels" and task.num_outputs == 4  # classes declared: softmax
    assert task.metric_names[:4] == ("dice_mean", "dice_edema", "dice_non_enhancing_tumor", "dice_enhancing_tumor")


def test_forcing_a_convention_that_contradicts_the_description_is_refused(seg_folders, tmp_path: Path, capsys):
    code = main(["prepare", "seg", str(seg_folders["train_msd"]), str(tmp_path / "c"), "--labels", "brats2023",
                 "--allow-missing", "--no-progress"])
    assert code == 2
    assert "declares label 1 as 'edema', but the brats2023 convention reads 1 as necrotic" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_brats_2018_and_2019_folders_with_hgg_and_lgg_are_one_set(seg_folders, tmp_path: Path):
    root = tmp_path / "MICCAI_BraTS_2018"
    for group, name in (("HGG", "HELD_001"), ("LGG", "HELD_003")):
        shutil.copytree(seg_folders["held_brats"] / name, root / group / name)
    found = detect_format(root)
    assert found.kind == "brats2018" and [c.case_id for c in found.cases(labelled=True)] == ["HELD_001", "HELD_003"]


def test_a_v1_cache_of_mckd_01_still_trains_with_the_brats_classes(seg_cache: Path, tmp_path: Path):
    from mckd.seg.dataset import SegOptions, build_seg

    old = tmp_path / "v1"
    shutil.copytree(seg_cache, old)
    record = json.loads((old / "dataset.json").read_text())
    for key in ("label_scheme", "plan", "source_format"):
        record.pop(key)
    record.update({"format": "mckd-brats-cache", "version": 1, "source_label_convention": "brats2018"})
    (old / "dataset.json").write_text(json.dumps(record))
    bundle = build_seg(SegOptions(cache=str(old), crop=[16, 16, 16]), 0)
    assert bundle.facts["labels"]["name"] == "brats2018" and bundle.facts["plan"]["orientation"] == ""


def test_a_nifti_written_back_for_a_4d_reference_is_3d(seg_folders, tmp_path: Path):
    from mckd.seg.predict import write_nifti

    reference = seg_folders["train_msd"] / "imagesTr" / "BRATS_001.nii.gz"
    image = nib.load(str(reference))
    out = write_nifti(np.ones(image.shape[:3], np.uint8), reference, tmp_path / "x.nii.gz", image.affine)
    written = nib.load(str(out))
    assert written.shape == image.shape[:3] and np.allclose(written.affine, image.affine)
    assert heldout_cases()  # the held-out cases build (used by test_seg_predict)


def test_brats_2023_names_are_recognised_their_labels_chosen_from_the_values_and_outputs_named_alike(tmp_path: Path):
    from mckd.seg.prepare import resolve_scheme

    case = heldout_cases()[0]
    folder = tmp_path / "BraTS2023" / "BraTS-GLI-00001-000"
    names = {"flair": "t2f", "t1": "t1n", "t1ce": "t1c", "t2": "t2w"}
    for sequence, image in case.images.items():
        folder.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(image, case.affine), str(folder / f"{folder.name}-{names[sequence]}.nii.gz"))
    labels_2023 = to_values(case.labels, {0: 0, 1: 1, 2: 2, 4: 3})  # BraTS 2023: enhancing is 3
    nib.save(nib.Nifti1Image(labels_2023, case.affine), str(folder / f"{folder.name}-seg.nii.gz"))
    found = detect_format(folder.parent)
    assert found.kind == "brats2023" and found.modalities == SEQUENCES
    cases = found.cases(labelled=True)
    scheme, reason = resolve_scheme(found, "auto", cases)
    assert scheme.name == "brats2023" and "3 = enhancing" in reason
    assert found.output_name(folder.name) == f"{folder.name}.nii.gz"  # BraTS's submission name, never the labels


def test_the_meta_validation_split_is_drawn_from_complete_cases_and_the_plain_cut_is_kept_when_it_has_them():
    from mckd.seg.dataset import split_cases

    ids = [f"c{i}" for i in range(10)]
    plain = split_cases(ids, [0.6, 0.2, 0.2], 3)
    assert split_cases(ids, [0.6, 0.2, 0.2], 3, complete=ids) == plain
    train, val, test = split_cases(ids, [0.6, 0.2, 0.2], 3, complete=["c7", "c2"])
    assert sorted(val) == ["c2", "c7"] and sorted(train + val + test) == ids and not set(train) & set(test)


def test_which_sequences_each_sample_has_is_read_from_the_records_without_drawing_crops(seg_cache: Path):
    from mckd.seg.dataset import SegOptions, build_seg

    bundle = build_seg(SegOptions(cache=str(seg_cache), crop=[16, 16, 16], downsample=2, crops_per_epoch=6), 0)
    train_ids = bundle.info["cases"]["train"]
    expected = [CachedCase(seg_cache, train_ids[i % len(train_ids)], SEQUENCES).present for i in range(6)]
    assert np.array_equal(bundle.train.presence().numpy(), np.stack(expected))
    assert np.array_equal(bundle.train.presence().numpy()[0], bundle.train[0]["present"].numpy())


def test_a_brats_case_folder_holding_only_its_label_file_is_a_brats_case(tmp_path: Path):
    case = heldout_cases()[0]
    folder = tmp_path / "labels_only" / "Brats18_X_1"
    folder.mkdir(parents=True)
    nib.save(nib.Nifti1Image(case.labels, case.affine), str(folder / "Brats18_X_1_seg.nii.gz"))
    found = detect_format(folder.parent)
    assert found.kind == "brats2018"
    assert found.output_name("Brats18_X_1") == "Brats18_X_1.nii.gz"


def test_a_folder_no_format_recognises_points_to_the_named_formats_before_a_layout_file(tmp_path: Path):
    folder = tmp_path / "odd" / "case_1"
    folder.mkdir(parents=True)
    case = heldout_cases()[0]
    nib.save(nib.Nifti1Image(case.images["flair"], case.affine), str(folder / "FLAIR_registered.nii.gz"))
    with pytest.raises(DataError) as error:
        detect_format(folder.parent)
    message = str(error.value)
    assert "'case_1' holds ['FLAIR_registered.nii.gz']" in message
    named, layout = message.index("--format NAME"), message.index("--format FILE.yaml")
    assert named < layout and all(name in message[named:layout] for name in ("nnunet", "msd", "brats2018", "brats2023"))


def test_two_sources_in_their_own_formats_and_labels_make_one_cache_whose_missing_sequences_are_real(tmp_path: Path):
    from seg_helpers import make_case, write_brats

    from conftest import ROOT

    brats = write_brats(tmp_path / "brats", heldout_cases()[:1])  # all four sequences, BraTS 2018 labels, no mask file
    made = make_case("brats_2013_pat0003_1", "brats2013", "brats_2013_pat0003_1")
    labels_2013 = made.labels.copy()
    half = np.zeros(labels_2013.shape, bool)
    half[: labels_2013.shape[0] // 2] = True
    labels_2013[(labels_2013 == 1) & half] = 3  # BraTS 2013's non-enhancing core: a core class like 1
    case = tmp_path / "b2013" / made.name
    case.mkdir(parents=True)
    for sequence, name in (("flair", "Flair_subtrMeanDivStd"), ("t1ce", "T1c_subtrMeanDivStd")):
        nib.save(nib.Nifti1Image(made.images[sequence], made.affine), str(case / f"{name}.nii.gz"))
    nib.save(nib.Nifti1Image(labels_2013, made.affine), str(case / "OTMultiClass.nii.gz"))
    brain = (made.images["flair"] != made.images["flair"][0, 0, 0]).astype(np.uint8)
    nib.save(nib.Nifti1Image(brain, made.affine), str(case / "brainmask.nii.gz"))
    out = tmp_path / "cache"
    assert main(["prepare", "seg", str(brats), str(tmp_path / "b2013"), str(out), "--format", "auto",
                 "--format", str(ROOT / "configs" / "brats2013_layout.yaml"), "--allow-missing", "--workers", "1",
                 "--no-progress"]) == 0
    record = read_dataset_record(out)
    assert tuple(record["modalities"]) == SEQUENCES and sorted(record["cases"]) == ["HELD_001", made.name]
    assert [s["labels"] for s in record["sources"]] == ["brats2018", "brats2013"]
    held, old = (CachedCase(out, name, SEQUENCES) for name in ("HELD_001", made.name))
    assert held.present.tolist() == [True, True, True, True] and old.present.tolist() == [True, False, True, False]
    assert old.image("t1") is None and "mask" in old.meta["files"] and "mask" not in held.meta["files"]
    # each source's labels onto the cache's classes (1 core, 2 oedema, 3 enhancing): the tumour lies inside the crop
    cached = np.bincount(np.asarray(old.labels()).ravel(), minlength=4)
    expected = [np.isin(labels_2013, values).sum() for values in ((1, 3), (2,), (4,))]
    assert cached[1:].tolist() == expected
