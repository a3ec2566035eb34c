"""Eq. 1-3: encoders see only what is present, missing features are filled, the decoder sees the concat."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mckd.method.fill import fill_missing_features
from mckd.method.model import MultiModalModel


class Recording(nn.Module):
    """A linear encoder that remembers how many rows it was given."""

    def __init__(self, size_in: int, size_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(size_in, size_out)
        self.rows: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows.append(x.shape[0])
        return self.linear(x)


def _per_modality_model() -> MultiModalModel:
    torch.manual_seed(0)
    encoders = {"image": Recording(5, 3), "audio": Recording(2, 3)}
    return MultiModalModel(["image", "audio"], encoders, nn.Linear(6, 4))


def test_per_modality_encoders_never_read_a_missing_input():
    model = _per_modality_model()
    image = torch.randn(4, 5)
    audio = torch.randn(4, 2)
    present = torch.tensor([[True, True], [True, False], [False, True], [True, False]])
    image[~present[:, 0]] = float("nan")  # reading them would spread NaN
    audio[~present[:, 1]] = float("nan")
    output = model([image, audio], present)
    assert torch.isfinite(output.prediction).all()
    assert model.encoders["image"].rows == [3]
    assert model.encoders["audio"].rows == [2]


def test_prediction_is_the_decoder_of_the_concatenated_mean_filled_features():
    model = _per_modality_model()
    image, audio = torch.randn(3, 5), torch.randn(3, 2)
    present = torch.tensor([[True, True], [True, False], [False, True]])
    output = model([image, audio], present)
    f_image = model.encoders["image"].linear(image)  # (B, 3)
    f_audio = model.encoders["audio"].linear(audio)
    features = torch.stack([f_image, f_audio], dim=1) * present.unsqueeze(-1)  # zero where missing
    torch.testing.assert_close(output.features, features)
    filled = fill_missing_features(features, present)
    # sample 1 has no audio: its audio features are its image features (the mean of one)
    torch.testing.assert_close(filled[1, 1], f_image[1])
    torch.testing.assert_close(output.prediction, model.decoder(filled.flatten(1)))


def test_feature_scale_multiplies_each_modality_after_filling():
    model = _per_modality_model()
    image, audio = torch.randn(2, 5), torch.randn(2, 2)
    present = torch.tensor([[True, True], [True, False]])
    scale = torch.tensor([0.3, 0.7])
    output = model([image, audio], present, feature_scale=scale)
    filled = fill_missing_features(model([image, audio], present).features, present)
    expected = model.decoder((filled * scale.view(1, 2, 1)).flatten(1))
    torch.testing.assert_close(output.prediction, expected)


def test_shared_encoder_runs_once_on_the_present_pairs_only():
    torch.manual_seed(0)
    shared = Recording(4, 2)
    model = MultiModalModel(["flair", "t1", "t2"], shared, nn.Linear(6, 2))
    inputs = [torch.randn(5, 4) for _ in range(3)]
    present = torch.rand(5, 3) < 0.5
    present[:, 0] = True
    output = model(inputs, present)
    assert shared.rows == [int(present.sum())]
    for b in range(5):
        for n in range(3):
            expected = shared.linear(inputs[n][b]) if present[b, n] else torch.zeros(2)
            torch.testing.assert_close(output.features[b, n], expected)


def test_encoders_must_be_named_exactly_as_the_modalities():
    with pytest.raises(ValueError, match="expected exactly"):
        MultiModalModel(["image", "audio"], {"image": nn.Identity()}, nn.Identity())


def test_model_refuses_a_mask_that_does_not_match_the_modalities():
    model = _per_modality_model()
    with pytest.raises(ValueError, match="present must be"):
        model([torch.zeros(2, 5), torch.zeros(2, 2)], torch.ones(2, 3, dtype=torch.bool))
