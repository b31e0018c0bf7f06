"""transferkit's own small networks without pretrained weights: baselines to measure transfer against."""

from __future__ import annotations

import torch
from torch import nn


class LeNet(nn.Module):
    """LeNet-5 for 32 px colour images (LeCun 1998): the classic from-scratch baseline."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )  # fmt: skip
        self.pool = nn.AdaptiveAvgPool2d(5)  # keeps 16x5x5 for inputs other than 32 px
        self.classifier = nn.Sequential(
            nn.Linear(400, 120), nn.ReLU(inplace=True), nn.Linear(120, 84), nn.ReLU(inplace=True), nn.Linear(84, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class Pixels(nn.Module):
    """Raw pixels as features: the baseline that shows what any learned representation adds."""

    def __init__(self, num_classes: int = 2):
        super().__init__()
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(3 * 16 * 16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(x))
