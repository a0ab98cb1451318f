"""Pre-activation ResNet-18 (He et al. 2016), as used for CIFAR-10 by Wong et al. (2020)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from trustlab.models._shapes import check_in_shape, check_num_classes

__all__ = ["PreActBlock", "preact_resnet18"]

WIDTHS = (64, 128, 256, 512)
BLOCKS = (2, 2, 2, 2)


class PreActBlock(nn.Module):
    """``x + F(x)`` with ``F = conv3x3 . relu . bn . conv3x3 . relu . bn`` (BN and ReLU before each conv).

    When the block changes width or stride, the shortcut is a 1x1 convolution applied to ``relu(bn1(x))``,
    as in the reference implementation.

    Args:
        in_planes: input channels.
        planes: output channels.
        stride: stride of the first convolution and of the shortcut.

    Shapes:
        ``(N, in_planes, H, W) -> (N, planes, ceil(H / stride), ceil(W / stride))``.

    Reference:
        He, Zhang, Ren & Sun, "Identity mappings in deep residual networks", ECCV 2016 (arXiv:1603.05027);
        ``PreActBlock`` in locuslab/fast_adversarial ``CIFAR10/preact_resnet.py``.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(torch.relu(self.bn2(out)))
        return out + shortcut


def preact_resnet18(*, in_shape: tuple[int, int, int], num_classes: int) -> nn.Sequential:
    """Pre-activation ResNet-18: a 3x3 stem, four stages of two :class:`PreActBlock`, BN-ReLU, pool, linear.

    Stage widths are 64/128/256/512 with strides 1/2/2/2. The final pooling is adaptive (global average), so
    any input of at least 8x8 works; on 32x32 inputs it equals the reference's ``avg_pool2d(out, 4)``.

    Args:
        in_shape: ``(C, H, W)`` of one input, with ``H, W >= 8``.
        num_classes: number of logits ``K``.

    Returns:
        An ``nn.Sequential`` mapping inputs in ``[0, 1]`` to logits (no normalisation layer: add one in front
        if the training recipe normalises).

    Shapes:
        ``(N, C, H, W) -> (N, K)``.

    Raises:
        TypeError, ValueError: if ``in_shape`` or ``num_classes`` is invalid, or ``H`` or ``W`` < 8.

    Reference:
        He et al., ECCV 2016 (arXiv:1603.05027); Wong, Rice & Kolter, "Fast is better than free", ICLR 2020
        (arXiv:2001.03994), ``PreActResNet18`` in locuslab/fast_adversarial.
    """
    c, _, _ = check_in_shape(in_shape, min_hw=8, model="preact-resnet18")
    k = check_num_classes(num_classes)
    layers: list[nn.Module] = [nn.Conv2d(c, WIDTHS[0], 3, stride=1, padding=1, bias=False)]
    in_planes = WIDTHS[0]
    for i, (planes, blocks) in enumerate(zip(WIDTHS, BLOCKS)):
        strides = [1 if i == 0 else 2] + [1] * (blocks - 1)
        stage = []
        for stride in strides:
            stage.append(PreActBlock(in_planes, planes, stride))
            in_planes = planes
        layers.append(nn.Sequential(*stage))
    layers += [
        nn.BatchNorm2d(in_planes),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),  # (N, 512, 1, 1) -> (N, 512)
        nn.Linear(in_planes, k),
    ]
    return nn.Sequential(*layers)
