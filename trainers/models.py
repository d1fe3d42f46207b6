"""Backbones g_theta and the two-headed network of Smooth Transfer Learning (paper eq. 1-2).

Every backbone maps (N, C, H, W) images with any C and any reasonable H = W to a feature vector and
exposes its width as `out_features`. `TransferNet` puts a source head h^S and a target head h^T on a
shared backbone. With ``bn="per_domain"`` every BatchNorm2d of the backbone is replaced by a
`DomainBatchNorm2d` holding one BatchNorm per domain (statistics *and* affine parameters), which the
network switches before each forward: the paper's digit experiments (A.2) use dataset-specific batch
statistics, its CIFAR experiments (A.1) shared ones.

torchvision is imported only when a torchvision backbone is built.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .config import BACKBONES

logger = logging.getLogger(__name__)

DOMAINS: tuple[str, ...] = ("target", "source")

# torchvision ImageNet weights: the file torch.hub would cache (never downloaded by the trainer).
_TV_WEIGHTS = {"resnet18": "ResNet18_Weights", "resnet50": "ResNet50_Weights"}


class PretrainedWeightsNotFoundError(FileNotFoundError):
    """ImageNet weights requested but not in the local torch hub cache."""


# ---------------------------------------------------------------------------------------------------
# small CNN


class SmallCNN(nn.Module):
    """Three conv-BN-ReLU layers and a global average pool: fast enough for 8x8 digits on a CPU.

    The two stride-2 layers reduce 8x8 to 2x2 (32x32 to 8x8); global pooling makes any size work.
    """

    def __init__(self, in_channels: int = 3, width: int = 32, dropout: float = 0.0):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1, bias=False),
            nn.BatchNorm2d(w),
            nn.ReLU(inplace=True),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(2 * w),
            nn.ReLU(inplace=True),
            nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(4 * w),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(dropout),
        )
        self.out_features = 4 * w
        self.n_stages = 3
        _init_conv_bn(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def stage_features(self, x: torch.Tensor, stage: int) -> torch.Tensor:
        """Feature map (N, C_l, H_l, W_l) after conv-BN-ReLU layer `stage` (1..3)."""
        _check_stage(self, stage)
        return self.features[: 3 * stage](x)


# ---------------------------------------------------------------------------------------------------
# ResNet-20 for CIFAR (He et al. 2016, option A shortcut)


class _CifarBasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        # Option A: a parameter-free shortcut (subsample by 2, zero-pad the new channels) keeps the
        # parameter count of the paper's CIFAR ResNets.
        self.pad = planes - in_planes if (stride != 1 or in_planes != planes) else 0
        self.stride = stride

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1 and self.pad == 0:
            return x
        x = x[:, :, :: self.stride, :: self.stride]
        half = self.pad // 2
        return F.pad(x, (0, 0, 0, 0, half, self.pad - half))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    """CIFAR ResNet of depth 6n + 2 (n = 3: ResNet-20, 0.27M parameters); widths 16/32/64."""

    def __init__(self, in_channels: int = 3, n: int = 3, dropout: float = 0.0):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers: list[nn.Module] = []
        in_planes = 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(n):
                layers.append(_CifarBasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.drop = nn.Dropout(dropout)  # the paper uses none for ResNet-20; kept for a uniform config
        self.out_features = 64
        self.n_stages = 3
        self.blocks_per_stage = n
        _init_conv_bn(self)

    def stage_features(self, x: torch.Tensor, stage: int) -> torch.Tensor:
        """Feature map after residual stage `stage` (1..3: 16, 32, 64 channels at strides 1, 2, 4)."""
        _check_stage(self, stage)
        out = F.relu(self.bn1(self.conv1(x)))
        return self.layers[: stage * self.blocks_per_stage](out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.drop(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


# ---------------------------------------------------------------------------------------------------
# Wide ResNet (Zagoruyko & Komodakis), pre-activation blocks, as xternalz/WideResNet-pytorch


class _WideBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.dropout = dropout
        self.equal = in_planes == planes and stride == 1
        self.shortcut = None if self.equal else nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        out = self.conv1(pre)
        out = F.relu(self.bn2(out))
        if self.dropout > 0:
            out = F.dropout(out, p=self.dropout, training=self.training)
        out = self.conv2(out)
        # The projection shortcut sees the pre-activated input (xternalz's choice).
        return out + (x if self.shortcut is None else self.shortcut(pre))


class WideResNet(nn.Module):
    """WRN-d-k, depth = 6n + 4; WRN-10-2 (n = 1): channels 16/32/64/128, about 0.30M parameters."""

    def __init__(self, in_channels: int = 3, depth: int = 10, widen: int = 2, dropout: float = 0.0):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n + 4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        blocks: list[nn.Module] = []
        in_planes = widths[0]
        for planes, stride in zip(widths[1:], (1, 2, 2), strict=True):
            for i in range(n):
                blocks.append(_WideBlock(in_planes, planes, stride if i == 0 else 1, dropout))
                in_planes = planes
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(in_planes)
        self.out_features = in_planes
        self.n_stages = 3
        self.blocks_per_stage = n
        _init_conv_bn(self)

    def stage_features(self, x: torch.Tensor, stage: int) -> torch.Tensor:
        """Output of block group `stage` (1..3; pre-activation, as the next block receives it)."""
        _check_stage(self, stage)
        return self.blocks[: stage * self.blocks_per_stage](self.conv1(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.blocks(self.conv1(x))))
        return torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)


# ---------------------------------------------------------------------------------------------------
# torchvision ResNets


class _TorchvisionBackbone(nn.Module):
    def __init__(self, net: nn.Module, out_features: int, dropout: float):
        super().__init__()
        self.net = net
        self.drop = nn.Dropout(dropout)
        self.out_features = out_features
        self.n_stages = 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.net(x))

    def stage_features(self, x: torch.Tensor, stage: int) -> torch.Tensor:
        """Output of `layer{stage}` (1..4) of the torchvision ResNet."""
        _check_stage(self, stage)
        net = self.net
        out = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        for i in range(1, stage + 1):
            out = getattr(net, f"layer{i}")(out)
        return out


def pretrained_weights_path(name: str) -> Path:
    """Where torch.hub caches the ImageNet weights of `name` (honours $TORCH_HOME)."""
    import torchvision.models as tvm

    weights = getattr(tvm, _TV_WEIGHTS[name]).IMAGENET1K_V1
    filename = weights.url.rsplit("/", 1)[-1]
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def _torchvision_resnet(name: str, in_channels: int, pretrained: bool, dropout: float) -> nn.Module:
    import torchvision.models as tvm

    net = getattr(tvm, name)(weights=None)  # weights=None: torchvision never touches the network
    if pretrained:
        path = pretrained_weights_path(name)
        if not path.is_file():
            weights = f"{_TV_WEIGHTS[name]}.IMAGENET1K_V1"
            raise PretrainedWeightsNotFoundError(
                f"pretrained=True needs the ImageNet weights of {name} at {path}, which does not exist. "
                "The trainer never downloads. On a machine with internet run\n"
                f"    python -c \"import torchvision; torchvision.models.{name}(weights='{weights}')\"\n"
                f"and copy ~/.cache/torch/hub/checkpoints/{path.name} to {path} "
                "(torch.hub looks in $TORCH_HOME/hub/checkpoints/), or set pretrained=False."
            )
        state = torch.load(path, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
        logger.info("loaded ImageNet weights for %s from %s", name, path)
    if in_channels != 3:
        old = net.conv1
        conv = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False)
        if pretrained:
            # Keep what the pretrained stem detects: grey input = the RGB filters summed over colour.
            with torch.no_grad():
                summed = old.weight.sum(dim=1, keepdim=True)
                conv.weight.copy_(summed.repeat(1, in_channels, 1, 1) / in_channels)
        net.conv1 = conv
    out_features = net.fc.in_features
    net.fc = nn.Identity()
    return _TorchvisionBackbone(net, out_features, dropout)


# ---------------------------------------------------------------------------------------------------


def build_backbone(
    name: str, in_channels: int = 3, *, dropout: float = 0.0, pretrained: bool = False
) -> nn.Module:
    """A backbone by its config name; `out_features` tells its feature width."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    if pretrained and name not in _TV_WEIGHTS:
        raise ValueError(f"pretrained weights exist only for {', '.join(_TV_WEIGHTS)}, not {name}")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if name == "small_cnn":
        return SmallCNN(in_channels, dropout=dropout)
    if name == "resnet20":
        return ResNetCifar(in_channels, n=3, dropout=dropout)
    if name == "wrn10_2":
        return WideResNet(in_channels, depth=10, widen=2, dropout=dropout)
    return _torchvision_resnet(name, in_channels, pretrained, dropout)


def _check_stage(backbone: nn.Module, stage: int) -> None:
    n = int(getattr(backbone, "n_stages", 0))
    if not 1 <= stage <= n:
        raise ValueError(f"{type(backbone).__name__} has feature stages 1..{n}, not {stage}")


def _init_conv_bn(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# ---------------------------------------------------------------------------------------------------
# per-domain batch norm


class DomainBatchNorm2d(nn.Module):
    """One BatchNorm2d per domain; `domain` (an index) selects which one the next forward uses.

    Built from an existing BatchNorm2d so pretrained statistics and affine parameters start out the
    same in every domain.
    """

    def __init__(self, bn: nn.BatchNorm2d, n_domains: int = 2):
        super().__init__()
        self.bns = nn.ModuleList(copy.deepcopy(bn) for _ in range(n_domains))
        self.domain = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bns[self.domain](x)


def convert_to_domain_bn(module: nn.Module, n_domains: int = 2) -> nn.Module:
    """Replace every BatchNorm2d inside `module` (in place) by a DomainBatchNorm2d; returns module."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, DomainBatchNorm2d(child, n_domains))
        else:
            convert_to_domain_bn(child, n_domains)
    return module


class TransferNet(nn.Module):
    """Shared backbone g, source head h^S, target head h^T (paper eq. 1-2).

    ``forward(x, "target")`` gives target logits, ``forward(x, "source")`` source logits. With
    ``bn="per_domain"`` the batch norms use the statistics of the domain being forwarded.
    ``n_source = 0`` builds no source head (a run that never uses the source).
    """

    def __init__(self, backbone: nn.Module, n_source: int, n_target: int, *, bn: str = "shared"):
        super().__init__()
        if bn not in ("shared", "per_domain"):
            raise ValueError(f"bn must be 'shared' or 'per_domain', got {bn!r}")
        if n_target < 1:
            raise ValueError(f"n_target must be >= 1, got {n_target}")
        self.bn = bn
        self.backbone = convert_to_domain_bn(backbone, len(DOMAINS)) if bn == "per_domain" else backbone
        features = int(backbone.out_features)
        # Target head first: the backbone and target head get the same initial values whether or not a
        # source head follows, so runs of different methods with one seed start from the same net.
        self.target_head = nn.Linear(features, n_target)
        self.source_head = nn.Linear(features, n_source) if n_source > 0 else None
        self.n_source = n_source
        self.n_target = n_target
        self._domain_bns = [m for m in self.modules() if isinstance(m, DomainBatchNorm2d)]

    def set_domain(self, domain: str) -> None:
        index = _domain_index(domain)
        for m in self._domain_bns:
            m.domain = index

    def features(self, x: torch.Tensor, domain: str = "target") -> torch.Tensor:
        if self._domain_bns:
            self.set_domain(domain)
        return self.backbone(x)

    def stage_features(self, x: torch.Tensor, stage: int, domain: str = "target") -> torch.Tensor:
        """The backbone's feature map at `stage` (1-based; `n_stages` of them), e.g. for AutoMix."""
        if self._domain_bns:
            self.set_domain(domain)
        return self.backbone.stage_features(x, stage)

    @property
    def n_stages(self) -> int:
        return int(getattr(self.backbone, "n_stages", 0))

    def head(self, domain: str) -> nn.Linear:
        if _domain_index(domain) == 0:
            return self.target_head
        if self.source_head is None:
            raise RuntimeError("this network was built without a source head (n_source = 0)")
        return self.source_head

    def forward(self, x: torch.Tensor, domain: str = "target") -> torch.Tensor:
        return self.head(domain)(self.features(x, domain))

    def forward_joint(
        self, x_target: torch.Tensor, x_source: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Both sub-batches through the backbone as one batch (shared BN only): (target, source) logits.

        With shared batch norm this is what "shared batch statistics" means: one set of batch
        statistics over the union of the two sub-batches, which is also what the running averages
        used at evaluation time then estimate. It is also one forward instead of two.
        """
        if self._domain_bns:
            raise RuntimeError("forward_joint needs bn='shared'; per-domain BN forwards each domain alone")
        feats = self.backbone(torch.cat([x_target, x_source]))
        n = len(x_target)
        return self.head("target")(feats[:n]), self.head("source")(feats[n:])


def _domain_index(domain: str) -> int:
    try:
        return DOMAINS.index(domain)
    except ValueError:
        raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}") from None


def build_model(config: Any, in_channels: int, n_source: int, n_target: int) -> TransferNet:
    """The network of a `TrainConfig` (backbone, dropout, pretrained, bn) for the given data shapes."""
    backbone = build_backbone(
        config.backbone, in_channels, dropout=config.dropout, pretrained=config.pretrained
    )
    return TransferNet(backbone, n_source, n_target, bn=config.bn)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = [
    "DOMAINS",
    "SmallCNN",
    "ResNetCifar",
    "WideResNet",
    "DomainBatchNorm2d",
    "TransferNet",
    "PretrainedWeightsNotFoundError",
    "build_backbone",
    "build_model",
    "convert_to_domain_bn",
    "count_parameters",
    "pretrained_weights_path",
]
