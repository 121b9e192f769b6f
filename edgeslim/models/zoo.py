"""The model zoo. Every builder takes the task's per-sample input shape and class count and adapts:
conv models use Conv1d for sequences `(C, L)` and Conv2d for images `(C, H, W)`, shrink kernels and
strides that would not fit a tiny input, and size their classifier from a dummy forward pass.

References: LeNet-300-100 and LeNet-5 (LeCun 1998), ResNet-8 and DS-CNN as in the MLPerf Tiny
reference (image classification: 32x32x3 -> 10; keyword spotting: 49x10x1 -> 12), MobileNetV1
(Howard 2017) with a width multiplier, the MLPerf Tiny anomaly-detection FC autoencoder. Sequence
models (GRU, LSTM, a small transformer) live in `edgeslim.models.sequence`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from edgeslim.models.sequence import GRUClassifier, LSTMClassifier, TransformerClassifier


def _nd(input_shape: tuple[int, ...]) -> int:
    """Spatial dims of the input: 1 for (C, L) or (F,), 2 for (C, H, W)."""
    return 2 if len(input_shape) == 3 else 1


def _conv(nd: int) -> type[nn.Module]:
    return nn.Conv2d if nd == 2 else nn.Conv1d


def _bn(nd: int) -> type[nn.Module]:
    return nn.BatchNorm2d if nd == 2 else nn.BatchNorm1d


def _pool(nd: int) -> nn.Module:
    return nn.AdaptiveAvgPool2d(1) if nd == 2 else nn.AdaptiveAvgPool1d(1)


class AsSequence(nn.Module):
    """Feature vectors (N, F) become single-channel sequences (N, 1, F) so conv models accept them."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(1) if x.dim() == 2 else x


def _fit(k: int, size: int) -> int:
    return max(1, min(k, size))


class LeNet300(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], num_classes: int, h1: int = 300, h2: int = 100):
        super().__init__()
        f = int(torch.tensor(input_shape).prod())
        self.flatten = nn.Flatten()
        self.fc1, self.fc2, self.fc3 = nn.Linear(f, h1), nn.Linear(h1, h2), nn.Linear(h2, num_classes)
        self.relu1, self.relu2 = nn.ReLU(), nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.fc1(self.flatten(x)))
        return self.fc3(self.relu2(self.fc2(x)))


class LeNet5(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], num_classes: int):
        super().__init__()
        nd = _nd(input_shape)
        cin = input_shape[0] if len(input_shape) > 1 else 1
        size = min(input_shape[1:]) if len(input_shape) > 1 else input_shape[0]
        conv, mp = _conv(nd), (nn.MaxPool2d if nd == 2 else nn.MaxPool1d)
        k = _fit(5, size)
        pooled = size // 2 if size >= 4 else size
        pad2 = 0 if pooled >= 2 * k else k // 2  # the reference LeNet-5's second conv is unpadded
        self.features = nn.Sequential(
            AsSequence(),
            conv(cin, 6, k, padding=k // 2), nn.ReLU(), mp(2) if size >= 4 else nn.Identity(),
            conv(6, 16, k, padding=pad2), nn.ReLU(), mp(2) if size >= 8 else nn.Identity(),
            nn.Flatten(),
        )
        flat = _flat_dim(self.features, input_shape)
        self.classifier = nn.Sequential(
            nn.Linear(flat, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    """ResNet basic block; the shortcut is a 1x1 conv when shape changes (MLPerf Tiny ResNet-8)."""

    def __init__(self, nd: int, cin: int, cout: int, stride: int):
        super().__init__()
        conv, bn = _conv(nd), _bn(nd)
        self.conv1, self.bn1 = conv(cin, cout, 3, stride, 1, bias=False), bn(cout)
        self.conv2, self.bn2 = conv(cout, cout, 3, 1, 1, bias=False), bn(cout)
        self.relu1, self.relu2 = nn.ReLU(), nn.ReLU()
        self.shortcut: nn.Module = (
            nn.Identity() if stride == 1 and cin == cout else conv(cin, cout, 1, stride, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu1(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu2(y + self.shortcut(x))


class ResNet8(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: int = 16):
        super().__init__()
        nd = _nd(input_shape)
        cin = input_shape[0] if len(input_shape) > 1 else 1
        size = min(input_shape[1:]) if len(input_shape) > 1 else input_shape[0]
        conv, bn = _conv(nd), _bn(nd)
        w = width
        self.stem = nn.Sequential(AsSequence(), conv(cin, w, 3, 1, 1, bias=False), bn(w), nn.ReLU())
        s2 = 2 if size >= 8 else 1
        s3 = 2 if size >= 16 else 1
        self.layer1 = BasicBlock(nd, w, w, 1)
        self.layer2 = BasicBlock(nd, w, 2 * w, s2)
        self.layer3 = BasicBlock(nd, 2 * w, 4 * w, s3)
        self.pool, self.flatten = _pool(nd), nn.Flatten()
        self.fc = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(self.flatten(self.pool(x)))


def _dw_block(nd: int, cin: int, cout: int, stride: int) -> nn.Sequential:
    conv, bn = _conv(nd), _bn(nd)
    return nn.Sequential(
        conv(cin, cin, 3, stride, 1, groups=cin, bias=False), bn(cin), nn.ReLU(),
        conv(cin, cout, 1, bias=False), bn(cout), nn.ReLU(),
    )


class DSCNN(nn.Module):
    """MLPerf Tiny keyword-spotting DS-CNN: a (10x4, stride 2) conv then 4 depthwise-separable blocks."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: int = 64):
        super().__init__()
        nd = _nd(input_shape)
        cin = input_shape[0] if len(input_shape) > 1 else 1
        dims = list(input_shape[1:]) if len(input_shape) > 1 else [input_shape[0]]
        conv, bn = _conv(nd), _bn(nd)
        ref_k = (10, 4) if nd == 2 else (10,)
        k = tuple(_fit(kk, d) for kk, d in zip(ref_k, dims))
        s = tuple(2 if d >= 2 * kk else 1 for kk, d in zip(k, dims))  # the reference strides by 2
        # TensorFlow 'same' padding (output = ceil(in / stride)), rounded up to be symmetric
        pad = tuple(math.ceil(max((math.ceil(d / ss) - 1) * ss + kk - d, 0) / 2) for kk, ss, d in zip(k, s, dims))
        self.stem = nn.Sequential(
            AsSequence(), conv(cin, width, k, s, pad, bias=False), bn(width), nn.ReLU(), nn.Dropout(0.2)
        )
        self.blocks = nn.Sequential(*[_dw_block(nd, width, width, 1) for _ in range(4)])
        self.pool, self.flatten, self.drop = _pool(nd), nn.Flatten(), nn.Dropout(0.4)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.flatten(self.pool(self.blocks(self.stem(x))))))


class MobileNetV1(nn.Module):
    """MobileNetV1; `alpha` scales every width. Strides of 2 are kept only while the map is >= 6 (the
    MLPerf Tiny visual-wake-words reference, 96x96 in, ends at 3x3: 7.49 M MACs at alpha 0.25)."""

    CFG = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, alpha: float = 0.25):
        super().__init__()
        nd = _nd(input_shape)
        cin = input_shape[0] if len(input_shape) > 1 else 1
        size = min(input_shape[1:]) if len(input_shape) > 1 else input_shape[0]
        conv, bn = _conv(nd), _bn(nd)
        c = max(8, int(32 * alpha))
        s = 2 if size >= 16 else 1
        size = (size + s - 1) // s
        layers: list[nn.Module] = [AsSequence(), conv(cin, c, 3, s, 1, bias=False), bn(c), nn.ReLU()]
        for out, stride in self.CFG:
            o = max(8, int(out * alpha))
            st = stride if size >= 6 else 1
            size = (size + st - 1) // st
            layers.append(_dw_block(nd, c, o, st))
            c = o
        self.features = nn.Sequential(*layers)
        self.pool, self.flatten = _pool(nd), nn.Flatten()
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.features(x))))


class CNN1D(nn.Module):
    """A small 1-D CNN for sequences (e.g. MNIST-1D, sensor windows); images are read row by row."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: int = 32):
        super().__init__()
        cin = input_shape[0] if len(input_shape) == 2 else 1
        w = width
        self.flatten_in = nn.Flatten(2) if len(input_shape) == 3 else nn.Identity()  # (C,H,W) -> (C,H*W)
        self.features = nn.Sequential(
            AsSequence(),
            nn.Conv1d(cin, w, 5, 1, 2), nn.BatchNorm1d(w), nn.ReLU(),
            nn.Conv1d(w, w, 3, 2, 1), nn.BatchNorm1d(w), nn.ReLU(),
            nn.Conv1d(w, 2 * w, 3, 2, 1), nn.BatchNorm1d(2 * w), nn.ReLU(),
        )
        self.pool, self.flatten = nn.AdaptiveAvgPool1d(1), nn.Flatten()
        self.fc = nn.Linear(2 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.features(self.flatten_in(x)))))


class AutoEncoder(nn.Module):
    """MLPerf Tiny anomaly-detection autoencoder (640-128x4-8-128x4-640), sized to the input."""

    objective = "reconstruction"

    def __init__(self, input_shape: tuple[int, ...], num_classes: int = 0, hidden: int = 128, code: int = 8):
        super().__init__()
        f = int(torch.tensor(input_shape).prod())
        self.input_shape = tuple(input_shape)
        dims = [f, hidden, hidden, hidden, hidden, code, hidden, hidden, hidden, hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for a, b in zip(dims, dims[1:]):
            layers += [nn.Linear(a, b), nn.BatchNorm1d(b), nn.ReLU()]
        layers.append(nn.Linear(hidden, f))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).view(x.shape)


def _flat_dim(features: nn.Module, input_shape: tuple[int, ...]) -> int:
    with torch.no_grad():
        return int(features(torch.zeros(1, *input_shape)).shape[1])


@dataclass(frozen=True)
class ZooEntry:
    build: Callable[..., nn.Module]
    ref_shape: tuple[int, ...]  # the reference input the published numbers use
    ref_classes: int
    about: str


ZOO: dict[str, ZooEntry] = {
    "lenet300": ZooEntry(LeNet300, (1, 28, 28), 10, "LeNet-300-100 MLP"),
    "lenet5": ZooEntry(LeNet5, (1, 28, 28), 10, "LeNet-5 CNN"),
    "resnet8": ZooEntry(ResNet8, (3, 32, 32), 10, "ResNet-8, MLPerf Tiny image classification"),
    "dscnn": ZooEntry(DSCNN, (1, 49, 10), 12, "DS-CNN, MLPerf Tiny keyword spotting"),
    "mobilenetv1": ZooEntry(MobileNetV1, (3, 96, 96), 2, "MobileNetV1, width multiplier alpha (default 0.25)"),
    "cnn1d": ZooEntry(CNN1D, (1, 40), 10, "1-D CNN for sequences"),
    "autoencoder": ZooEntry(AutoEncoder, (640,), 0, "FC autoencoder, MLPerf Tiny anomaly detection"),
    "gru": ZooEntry(GRUClassifier, (1, 40), 10, "GRU classifier for signals (hidden, frame samples a step)"),
    "lstm": ZooEntry(LSTMClassifier, (1, 40), 10, "LSTM classifier for signals (hidden, frame samples a step)"),
    "transformer": ZooEntry(TransformerClassifier, (1, 40), 10, "small transformer (conv stem, encoder blocks)"),
}
