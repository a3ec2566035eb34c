"""Evaluation over every non-empty subset of modalities (2^N - 1 rows), as observed, per pattern; the metrics."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from mckd.data.bundle import MultiModalTensorDataset
from mckd.errors import DataError
from mckd.evaluation import OBSERVED, all_subsets, evaluate, evaluate_subsets, missingness_patterns, subset_name
from mckd.method.model import MultiModalModel
from mckd.tasks.classification import ClassificationTask

DIGIT_VIEWS = ["fou", "fac", "kar", "pix", "zer", "mor"]


@pytest.mark.parametrize("n", [1, 2, 3, 4, 6])
def test_all_subsets_has_2_to_the_n_minus_1_distinct_non_empty_subsets(n):
    names = [f"m{i}" for i in range(n)]
    subsets = all_subsets(names)
    assert len(subsets) == 2**n - 1
    assert len(set(subsets)) == len(subsets) and all(subsets)
    every = {frozenset(c) for k in range(1, n + 1) for c in itertools.combinations(names, k)}
    assert {frozenset(s) for s in subsets} == every


def test_all_subsets_orders_by_size_then_by_modality_order():
    subsets = all_subsets(["flair", "t1", "t1ce", "t2"])
    assert subsets[:5] == [("flair",), ("t1",), ("t1ce",), ("t2",), ("flair", "t1")]
    assert subsets[-1] == ("flair", "t1", "t1ce", "t2")
    sizes = [len(s) for s in subsets]
    assert sizes == sorted(sizes)
    digits = all_subsets(DIGIT_VIEWS)
    assert len(digits) == 63 and digits[5] == ("mor",) and digits[6] == ("fou", "fac")
    for s in digits:  # within a subset, names keep the fixed modality order
        assert list(s) == sorted(s, key=DIGIT_VIEWS.index)
    assert subset_name(("fac", "pix")) == "fac+pix"


def _signal_and_noise_model() -> tuple[MultiModalModel, MultiModalTensorDataset, torch.Tensor]:
    """The decoder reads only the ``signal`` slot; with ``signal`` missing, Eq. 2 fills it with ``noise``."""
    generator = torch.Generator().manual_seed(0)
    target = torch.randint(0, 2, (50,), generator=generator)
    signal = (1 - 2 * target).float().unsqueeze(1)  # always right
    noise = (torch.randint(0, 2, (50, 1), generator=generator) * 2 - 1).float()
    decoder = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        decoder.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
    model = MultiModalModel(["signal", "noise"], {"signal": nn.Identity(), "noise": nn.Identity()}, decoder)
    noise_accuracy = ((noise.squeeze(1) > 0) == (target == 0)).float().mean()
    return model, MultiModalTensorDataset([signal, noise], target), noise_accuracy


def test_evaluate_subsets_scores_each_subset_with_only_its_modalities_present():
    model, dataset, noise_accuracy = _signal_and_noise_model()
    rows = evaluate_subsets(model, ClassificationTask(2), dataset, batch_size=16, device=torch.device("cpu"))
    assert [(r["subset"], r["size"]) for r in rows] == [("signal", 1), ("noise", 1), ("signal+noise", 2)]
    assert rows[0]["accuracy"] == 1.0
    assert rows[1]["accuracy"] == pytest.approx(noise_accuracy.item())
    assert rows[2]["accuracy"] == 1.0
    assert 0.2 < noise_accuracy < 0.8  # the case is not trivial


def test_with_real_missingness_a_subset_row_covers_only_the_samples_that_have_all_of_it():
    model, dataset, _ = _signal_and_noise_model()
    present = torch.ones(50, 2, dtype=torch.bool)
    present[:10, 0] = False  # the first ten samples truly lack the signal
    present[10:15, 1] = False  # five lack the noise
    result = evaluate(model, ClassificationTask(2), dataset.with_present(present), 16, torch.device("cpu"))
    rows = {r["subset"]: r for r in result.subsets}
    assert {name: r["samples"] for name, r in rows.items()} == {"signal": 40, "noise": 45, "signal+noise": 35}
    noise, target = dataset.inputs[1].squeeze(1), dataset.target
    noise_right = ((noise > 0) == (target == 0))
    assert rows["noise"]["accuracy"] == pytest.approx(torch.cat([noise_right[:10], noise_right[15:]]).float().mean().item())
    assert rows["signal"]["accuracy"] == 1.0 and rows["signal+noise"]["accuracy"] == 1.0


def test_single_modalities_are_also_scored_on_the_same_samples_those_with_every_modality():
    model, dataset, _ = _signal_and_noise_model()
    present = torch.ones(50, 2, dtype=torch.bool)
    present[:10, 0] = False  # the signal row would cover 40 samples, the noise row 45: not the same ones
    present[10:15, 1] = False
    result = evaluate(model, ClassificationTask(2), dataset.with_present(present), 16, torch.device("cpu"))
    rows = {r["subset"]: r for r in result.singles_on_complete}
    complete = present.all(dim=1)
    noise, target = dataset.inputs[1].squeeze(1), dataset.target
    noise_right = ((noise > 0) == (target == 0))[complete]
    assert {name: (r["size"], r["samples"]) for name, r in rows.items()} == {
        "signal": (1, int(complete.sum())), "noise": (1, int(complete.sum()))}
    assert rows["noise"]["accuracy"] == pytest.approx(noise_right.float().mean().item())
    assert rows["signal"]["accuracy"] == 1.0


def test_the_observed_rows_predict_each_sample_from_its_own_modalities_overall_and_per_pattern():
    model, dataset, _ = _signal_and_noise_model()
    present = torch.ones(50, 2, dtype=torch.bool)
    present[:10, 0] = False  # noise only: right where the noise happens to be
    present[10:15, 1] = False  # signal only: always right
    result = evaluate(model, ClassificationTask(2), dataset.with_present(present), 16, torch.device("cpu"))
    noise, target = dataset.inputs[1].squeeze(1)[:10], dataset.target[:10]
    noise_right = int(((noise > 0) == (target == 0)).sum())
    by_pattern = {r["pattern"]: r for r in result.observed}
    assert [r["pattern"] for r in result.observed] == [OBSERVED, "signal", "noise", "signal+noise"]
    assert {k: r["samples"] for k, r in by_pattern.items()} == {OBSERVED: 50, "signal": 5, "noise": 10, "signal+noise": 35}
    assert by_pattern[OBSERVED]["accuracy"] == pytest.approx((40 + noise_right) / 50)
    assert by_pattern["noise"]["accuracy"] == pytest.approx(noise_right / 10)


def test_a_subset_that_no_sample_has_is_a_row_of_no_samples_and_no_metrics_never_nan():
    model, dataset, _ = _signal_and_noise_model()
    present = torch.ones(50, 2, dtype=torch.bool)
    present[:, 1] = False  # nobody has the noise
    result = evaluate(model, ClassificationTask(2), dataset.with_present(present), 16, torch.device("cpu"))
    row = next(r for r in result.subsets if r["subset"] == "noise")
    assert row["samples"] == 0 and all(row[m] is None for m in ClassificationTask.metric_names)
    assert [r["pattern"] for r in result.observed] == [OBSERVED, "signal"]


def test_a_test_sample_with_no_modality_at_all_is_a_clear_error():
    model, dataset, _ = _signal_and_noise_model()
    present = torch.ones(50, 2, dtype=torch.bool)
    present[3] = False
    with pytest.raises(DataError, match="a test sample has no modality at all"):
        evaluate(model, ClassificationTask(2), dataset.with_present(present), 16, torch.device("cpu"))


def test_classification_metrics_match_their_definitions_on_a_small_example():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0], [2.0, 0.0, 0.0],
                           [0.0, 1.0, 0.5], [1.0, 0.0, 3.0]])
    labels = torch.tensor([0, 1, 2, 1, 1, 2])
    accumulator = ClassificationTask(3).accumulator()
    accumulator.update(logits[:4], labels[:4])
    accumulator.update(logits[4:], labels[4:])
    metrics = accumulator.compute()
    # predictions 0, 1, 2, 0, 1, 2: right 5 of 6; recall per class: 1/1, 2/3, 2/2
    assert metrics["accuracy"] == pytest.approx(5 / 6)
    assert metrics["balanced_accuracy"] == pytest.approx((1 + 2 / 3 + 1) / 3)
    f1 = [2 * 1 * 0.5 / 1.5, 2 * 1 * (2 / 3) / (1 + 2 / 3), 1.0]  # class 0: precision 1/2, recall 1
    assert metrics["macro_f1"] == pytest.approx(sum(f1) / 3)
    assert 0.5 < metrics["auroc"] <= 1.0
    one_class = ClassificationTask(3).accumulator()
    one_class.update(logits[:1], labels[:1])
    assert one_class.compute()["auroc"] is None  # AUROC over one class is undefined, not NaN


def test_the_pattern_table_counts_each_split():
    _, dataset, _ = _signal_and_noise_model()
    present = torch.ones(50, 2, dtype=torch.bool)
    present[:10, 0] = False
    rows = missingness_patterns({"train": dataset.with_present(present), "test": dataset}, ["signal", "noise"])
    assert rows == [{"pattern": "noise", "size": 1, "train": 10, "test": 0, "total": 10},
                    {"pattern": "signal+noise", "size": 2, "train": 40, "test": 50, "total": 90}]


def test_evaluate_subsets_does_not_depend_on_the_batch_size():
    model, dataset, _ = _signal_and_noise_model()
    task, cpu = ClassificationTask(2), torch.device("cpu")
    assert evaluate_subsets(model, task, dataset, 7, cpu) == evaluate_subsets(model, task, dataset, 50, cpu)


def test_evaluating_an_empty_split_is_an_error_not_a_score_of_zero():
    model, dataset, _ = _signal_and_noise_model()
    empty = MultiModalTensorDataset([t[:0] for t in dataset.inputs], dataset.target[:0])
    with pytest.raises(DataError, match="no samples"):
        evaluate_subsets(model, ClassificationTask(2), empty, 8, torch.device("cpu"))
