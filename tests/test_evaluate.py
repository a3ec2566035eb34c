"""Evaluation over every non-empty subset of modalities (2^N - 1 rows)."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from mckd.data.bundle import MultiModalTensorDataset
from mckd.errors import DataError
from mckd.evaluation import all_subsets, evaluate_subsets, subset_name
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


def test_evaluate_subsets_intersects_each_subset_with_what_the_sample_has():
    model, dataset, _ = _signal_and_noise_model()
    present = torch.ones(50, 2, dtype=torch.bool)
    present[:10, 0] = False  # the first ten samples never had the signal
    partial = dataset.with_present(present)
    rows = evaluate_subsets(model, ClassificationTask(2), partial, 16, torch.device("cpu"), subsets=[("signal", "noise")])
    noise, target = dataset.inputs[1][:10].squeeze(1), dataset.target[:10]
    expected = (40 + int(((noise > 0) == (target == 0)).sum())) / 50
    assert rows[0]["accuracy"] == pytest.approx(expected)
    with pytest.raises(DataError, match="none of the modalities of subset 'signal'"):
        evaluate_subsets(model, ClassificationTask(2), partial, 16, torch.device("cpu"), subsets=[("signal",)])


def test_evaluate_subsets_does_not_depend_on_the_batch_size():
    model, dataset, _ = _signal_and_noise_model()
    task, cpu = ClassificationTask(2), torch.device("cpu")
    assert evaluate_subsets(model, task, dataset, 7, cpu) == evaluate_subsets(model, task, dataset, 50, cpu)


def test_evaluating_an_empty_split_is_an_error_not_a_score_of_zero():
    model, dataset, _ = _signal_and_noise_model()
    empty = MultiModalTensorDataset([t[:0] for t in dataset.inputs], dataset.target[:0])
    with pytest.raises(DataError, match="no samples"):
        evaluate_subsets(model, ClassificationTask(2), empty, 8, torch.device("cpu"))
