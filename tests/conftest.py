import pytest
import torch

from fbnn import random as fr


@pytest.fixture
def toy_classification():
    """256 points in 8 dimensions, 3 classes that a small MLP separates."""
    x = fr.normal(fr.key(11), (256, 8))
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return x, y


@pytest.fixture
def small_conv_bn_net():
    """A conv net with BatchNorm, LayerNorm and dropout on 6x6 inputs (flattened to 36)."""
    with torch.random.fork_rng(devices=[]):
        return torch.nn.Sequential(
            torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(), torch.nn.Flatten(),
            torch.nn.LayerNorm(64), torch.nn.Dropout(0.1), torch.nn.Linear(64, 3))
