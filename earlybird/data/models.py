"""The CIFAR networks of the paper, registered in timm's registry.

``timm.create_model("cifar_vgg16_bn", num_classes=100)`` or ``"cifar_preresnet101"`` build them
once ``earlybird`` is imported. Both follow the network-slimming reference: VGG with BatchNorm,
no classifier MLP (average pool, one linear layer), and pre-activation ResNets for 32x32 inputs.
``width`` scales every channel count (``width=0.25`` gives a narrow VGG for CPU runs).
Initialisation follows the reference: conv weights ``N(0, 2/(k*k*out))``, BN gamma 0.5 (equal
gammas tie; the pruner breaks ties by position), linear ``N(0, 0.01)``.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Optional, Sequence, Union

import torch
from timm.models import register_model
from torch import Tensor, nn

__all__ = [
    "CifarVGG",
    "PreResNet",
    "VGG_CFGS",
    "VGG_DEPTHS",
    "PRERESNET_DEPTHS",
    "ARCHS",
    "preresnet_block",
    "build_model",
    "check_arch",
    "cifar_vit",
]

ARCHS = ("vgg", "preresnet", "vit", "resnet18", "resnet50")
VIT_HEADS = 3  # the CIFAR ViT's heads (DeiT-Tiny's); width 1.0 is 192 wide

VGG_CFGS: dict[int, list[Union[int, str]]] = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512],
}


def _scaled(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


def _init(model: nn.Module, gamma: float) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, gamma)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


class CifarVGG(nn.Module):
    """VGG-11/13/16/19 with BatchNorm for 32x32 inputs and one linear classifier.

    >>> CifarVGG(16, num_classes=10, width=0.25)(torch.randn(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    """

    def __init__(
        self,
        depth: int = 16,
        num_classes: int = 10,
        width: float = 1.0,
        in_chans: int = 3,
        bn_gamma: float = 0.5,
    ) -> None:
        super().__init__()
        if depth not in VGG_CFGS:
            raise ValueError(f"VGG depth must be one of {sorted(VGG_CFGS)}, got {depth}")
        if not width > 0:
            raise ValueError(f"width must be > 0, got {width}")
        layers: list[nn.Module] = []
        c = in_chans
        for v in VGG_CFGS[depth]:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
                continue
            out = _scaled(int(v), width)
            layers += [
                nn.Conv2d(c, out, 3, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(inplace=True),
            ]
            c = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = c
        self.classifier = nn.Linear(c, num_classes)
        _init(self, bn_gamma)

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


class _Basic(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.downsample = _shortcut(cin, planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(torch.relu(self.bn1(x)))
        out = self.conv2(torch.relu(self.bn2(out)))
        return out + (self.downsample(x) if self.downsample is not None else x)


class _Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.downsample = _shortcut(cin, planes * 4, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(torch.relu(self.bn1(x)))
        out = self.conv2(torch.relu(self.bn2(out)))
        out = self.conv3(torch.relu(self.bn3(out)))
        return out + (self.downsample(x) if self.downsample is not None else x)


def _shortcut(cin: int, cout: int, stride: int) -> Optional[nn.Module]:
    if stride == 1 and cin == cout:
        return None
    return nn.Conv2d(cin, cout, 1, stride, bias=False)


def preresnet_block(depth: int) -> Literal["basic", "bottleneck"]:
    """Block type of a PreResNet depth: basic for ``6n+2`` up to 110, else bottleneck ``9n+2``.

    >>> preresnet_block(20), preresnet_block(110), preresnet_block(101), preresnet_block(164)
    ('basic', 'basic', 'bottleneck', 'bottleneck')
    """
    if (depth - 2) % 6 == 0 and 8 <= depth <= 110:
        return "basic"
    if (depth - 2) % 9 == 0 and depth >= 11:
        return "bottleneck"
    raise ValueError(
        f"PreResNet depth must be 6n+2 (basic, up to 110) or 9n+2 (bottleneck), "
        f"e.g. 20, 56, 101, 110, 164; got {depth}"
    )


class PreResNet(nn.Module):
    """Pre-activation ResNet for 32x32 inputs (three stages of 16, 32, 64 planes).

    >>> PreResNet(20, num_classes=10)(torch.randn(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    """

    def __init__(
        self,
        depth: int = 56,
        num_classes: int = 10,
        width: float = 1.0,
        block: Optional[str] = None,
        in_chans: int = 3,
        bn_gamma: float = 0.5,
    ) -> None:
        super().__init__()
        kind = block or preresnet_block(depth)
        if kind not in ("basic", "bottleneck"):
            raise ValueError(f"block must be 'basic' or 'bottleneck', got {block!r}")
        unit = _Basic if kind == "basic" else _Bottleneck
        per_stage = (depth - 2) // (6 if kind == "basic" else 9)
        if per_stage < 1:
            raise ValueError(f"PreResNet depth {depth} is too small for {kind} blocks")
        planes = [_scaled(p, width) for p in (16, 32, 64)]
        self.conv1 = nn.Conv2d(in_chans, planes[0], 3, padding=1, bias=False)
        c = planes[0]
        stages = []
        for i, p in enumerate(planes):
            blocks = []
            for j in range(per_stage):
                blocks.append(unit(c, p, 2 if (i > 0 and j == 0) else 1))
                c = p * unit.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.bn = nn.BatchNorm2d(c)
        self.num_features = c
        self.fc = nn.Linear(c, num_classes)
        _init(self, bn_gamma)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        return self.fc(torch.relu(self.bn(x)).mean((2, 3)))


def _drop_timm_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    if kwargs.pop("pretrained", False):
        raise ValueError("earlybird's CIFAR models have no pretrained weights")
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(key, None)
    return kwargs


def _register(cls: type, depth: int, name: str, doc: str) -> None:
    def build(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        return cls(depth, **_drop_timm_kwargs({"pretrained": pretrained, **kwargs}))

    build.__name__, build.__doc__, build.__module__ = name, doc, __name__
    globals()[name] = build  # timm lists it in this module's __all__
    register_model(build)


VGG_DEPTHS: Sequence[int] = tuple(VGG_CFGS)
PRERESNET_DEPTHS: Sequence[int] = (20, 32, 44, 56, 101, 110, 164)
for _d in VGG_DEPTHS:
    _register(CifarVGG, _d, f"cifar_vgg{_d}_bn", f"CIFAR VGG-{_d} with BatchNorm (network slimming).")
for _d in PRERESNET_DEPTHS:
    _register(PreResNet, _d, f"cifar_preresnet{_d}", f"CIFAR pre-activation ResNet-{_d}.")


def cifar_vit(depth: int = 6, num_classes: int = 10, width: float = 1.0) -> nn.Module:
    """A DeiT-Tiny-like ViT for 32x32 inputs (timm's ``VisionTransformer``): patch 4 (64
    tokens and a class token), 3 heads, MLP ratio 4, ``depth`` blocks, embedding
    ``192 * width`` (rounded to a multiple of the heads).

    >>> cifar_vit(4, 10, width=0.5).embed_dim
    96
    """
    from timm.models.vision_transformer import VisionTransformer

    dim = max(1, round(192 * width / VIT_HEADS)) * VIT_HEADS
    return VisionTransformer(
        img_size=32,
        patch_size=4,
        embed_dim=dim,
        depth=depth,
        num_heads=VIT_HEADS,
        mlp_ratio=4.0,
        num_classes=num_classes,
    )


def check_arch(arch: str, depth: Optional[int]) -> None:
    """Refuse an architecture :func:`build_model` cannot build, naming the allowed ones.

    >>> check_arch("preresnet", 26)                  # 6n+2: any such depth builds
    >>> check_arch("vgg", 12)
    Traceback (most recent call last):
    ...
    ValueError: VGG depth must be one of [11, 13, 16, 19], got 12
    """
    if arch == "vgg":
        if (depth or 16) not in VGG_CFGS:
            raise ValueError(f"VGG depth must be one of {sorted(VGG_CFGS)}, got {depth}")
    elif arch == "preresnet":
        preresnet_block(depth or 56)
    elif arch not in ARCHS:
        import timm

        if not timm.is_model(arch):
            raise ValueError(
                f"unknown arch {arch!r}; choose from {list(ARCHS)} or any timm model "
                f"name (e.g. {', '.join(timm.list_models('resnet*')[:3])}, ...)"
            )


def build_model(arch: str, depth: Optional[int], num_classes: int, width: float = 1.0) -> nn.Module:
    """Build ``vgg``/``preresnet``/``vit`` (CIFAR, with ``depth``), torchvision's
    ``resnet18``/``resnet50``,
    or any timm model name, untrained. timm's ``zero_init_last`` is turned off: zero gammas tie
    at 0 and ``sign(0) = 0``, so the slimming penalty could never move them and the first masks
    would be decided by position alone. Every PreResNet depth :func:`preresnet_block` accepts
    builds (the timm registry holds the usual ones).

    >>> build_model("preresnet", 26, 10, width=0.25).fc.out_features
    10
    """
    check_arch(arch, depth)
    if arch == "vgg":
        return CifarVGG(depth or 16, num_classes=num_classes, width=width)
    if arch == "preresnet":
        return PreResNet(depth or 56, num_classes=num_classes, width=width)
    if arch == "vit":
        return cifar_vit(depth or 6, num_classes, width)
    if arch in ("resnet18", "resnet50"):
        import torchvision

        return getattr(torchvision.models, arch)(num_classes=num_classes)
    import timm

    try:
        return timm.create_model(arch, pretrained=False, num_classes=num_classes, zero_init_last=False)
    except TypeError:
        return timm.create_model(arch, pretrained=False, num_classes=num_classes)
