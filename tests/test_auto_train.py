"""A model the user writes, tailored, trains on the digits like the zoo model of the same depth."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tat_ext.auto import tailor
from tat_ext.datasets import digits
from tat_ext.models import vanilla_resnet

pytestmark = pytest.mark.usefixtures("one_thread")


class UserCNN(nn.Module):
    """A plain VGG-style stack: 13 conv + ReLU layers at constant width, flatten, linear."""

    def __init__(self, layers: int = 13, width: int = 16) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(1 if i == 0 else width, width, 3, padding=1) for i in range(layers))
        self.fc = nn.Linear(width * 64, 10)

    def forward(self, x):
        for conv in self.convs:
            x = F.relu(conv(x))
        return self.fc(x.flatten(1))


def _train(model, data, *, seed: int, epochs: int = 3, lr: float = 1e-3) -> float:
    """Adam, batch 64, a seeded data order; test accuracy in percent."""
    order = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):
        for index in torch.randperm(len(data.train), generator=order).split(64):
            x, y = data.batch(data.train, index)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        x, y = data.batch(data.test, torch.arange(len(data.test)))
        return (model(x).argmax(1) == y).double().mean().item() * 100.0


def test_tailored_user_model_trains_like_the_zoo_model():
    data = digits()
    torch.manual_seed(0)
    # The zoo's 13-nonlinear-layer chain at the same width: 6 basic blocks without shortcuts.
    zoo = vanilla_resnet(None, 10, width=16, blocks=(6,), bottleneck=False, small_input=True, input_size=8,
                         in_channels=1)
    zoo_acc = _train(zoo, data, seed=0)
    torch.manual_seed(0)
    user = tailor(UserCNN(), torch.zeros(2, 1, 8, 8))
    assert user.tat.structure.depth == 13
    assert user.tat.activations["leaky_relu"]["slope"] == pytest.approx(zoo.activation.slope, abs=1e-12)
    user_acc = _train(user, data, seed=0)
    assert zoo_acc > 85.0
    assert abs(user_acc - zoo_acc) <= 2.0, (user_acc, zoo_acc)
