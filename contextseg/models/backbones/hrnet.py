"""HRNetV2 backbone (Wang et al. 2019, "Deep High-Resolution Representation Learning for Visual Recognition").

The network keeps a high-resolution branch through the whole depth (paper Fig. 2):

    stem      two 3x3 stride-2 conv-BN-ReLU, 64 ch                           (B, C_in, H, W) -> (B, 64, H/4, W/4)
    stage 1   Bottleneck residual units (expansion 4)                         -> (B, 4*c1, H/4, W/4)
    stage 2-4 transition (3x3 conv to the new widths, a strided 3x3 conv starts each new branch), then
              HighResolutionModules: per branch a few BasicBlocks, then the multi-resolution fusion of
              paper Fig. 3: output i = ReLU(sum_j f_ij(x_j)) with
                  f_ij = identity                              for j == i
                  f_ij = bilinear-resize(BN(conv1x1(x_j)))     for j > i (lower resolution: upsample; align_corners as
                                                               the model's setting, official: True)
                  f_ij = (i - j) strided 3x3 conv-BN(-ReLU)    for j < i (higher resolution: downsample)

Outputs are the four branches (HRNetV2 keeps all of them), widths (w, 2w, 4w, 8w) for the presets:

    (B, C_in, H, W) -> [(B, w, H4, W4), (B, 2w, H8, W8), (B, 4w, H16, W16), (B, 8w, H32, W32)]

Exact sizes for any input: every stride-2 conv is 3x3 with padding 1, so it maps n -> ceil(n / 2); hence
H4 = ceil(H/4), H8 = ceil(H4/2) = ceil(H/8), H16 = ceil(H/16), H32 = ceil(H/32) (same for W). Upsampling in the
fusion resizes to the exact size of the target branch (``size=``, never a scale factor), so any input size works
(97x131, 360x480, ...).

Module and parameter names mirror the official implementation (HRNet/HRNet-Semantic-Segmentation,
``lib/models/seg_hrnet.py``: ``conv1``, ``bn1``, ``layer1``, ``transition1``, ``stage2.0.branches.0.0.conv1``,
``stage2.0.fuse_layers.0.1.0``, ...), so the official ImageNet checkpoints load into it with ``strict=False`` (their
classification layers ``incre_modules``, ``downsamp_modules``, ``final_layer``, ``classifier`` are left out here).
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

from torch import Tensor, nn

from ...errors import ContextSegError
from ...registry import BACKBONES
from ..attention import SEBlock
from ..resize import DEFAULT_ALIGN_CORNERS, resize
from .init import he_init, official_hrnet_init

INITS = {"he": he_init, "official": official_hrnet_init}
BN_MOMENTUM = 0.1  # official value, PyTorch convention (== nn.BatchNorm2d default)


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution, padding 1, no bias (a BatchNorm follows)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, momentum=BN_MOMENTUM)


class BasicBlock(nn.Module):
    """ResNet basic residual unit (two 3x3 convs): (B, C_in, H, W) -> (B, planes, H/stride, W/stride)."""

    expansion = 1
    fuse_pairs = (("conv1", "bn1"), ("conv2", "bn2"))  # (conv, BN) attribute pairs for fuse_conv_bn

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = bn(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = bn(planes)
        self.downsample = downsample
        self.se = nn.Identity()  # add_se() puts an SEBlock here, on the residual branch

    def forward(self, x: Tensor) -> Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.se(self.bn2(self.conv2(out)))
        out += residual
        return self.relu(out)


class Bottleneck(nn.Module):
    """ResNet bottleneck unit (1x1, 3x3, 1x1, expansion 4): (B, C_in, H, W) -> (B, 4*planes, H/stride, W/stride)."""

    expansion = 4
    fuse_pairs = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = bn(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = bn(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = bn(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.se = nn.Identity()  # add_se() puts an SEBlock here, on the residual branch

    def forward(self, x: Tensor) -> Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.se(self.bn3(self.conv3(out)))
        out += residual
        return self.relu(out)


def make_layer(
    block: type[BasicBlock] | type[Bottleneck], inplanes: int, planes: int, num_blocks: int
) -> nn.Sequential:
    """``num_blocks`` residual units; the first gets a 1x1 conv-BN shortcut when the width changes."""
    downsample = None
    if inplanes != planes * block.expansion:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, planes * block.expansion, kernel_size=1, bias=False), bn(planes * block.expansion)
        )
    layers = [block(inplanes, planes, 1, downsample)]
    layers += [block(planes * block.expansion, planes) for _ in range(1, num_blocks)]
    return nn.Sequential(*layers)


class HighResolutionModule(nn.Module):
    """Parallel branches of BasicBlocks followed by multi-resolution fusion (paper Fig. 3).

    Takes and returns a list of ``len(channels)`` maps; branch i is (B, channels[i], H_i, W_i) with
    H_{i+1} = ceil(H_i / 2). With ``multi_scale_output=False`` only the highest-resolution output is returned.
    """

    def __init__(self, channels: Sequence[int], num_blocks: Sequence[int], multi_scale_output: bool = True):
        super().__init__()
        n = len(channels)
        if len(num_blocks) != n:
            raise ContextSegError(
                f"HRNet stage has {n} branch widths {list(channels)} but {len(num_blocks)} block counts "
                f"{list(num_blocks)}; give one block count per branch"
            )
        self.num_branches = n
        self.align_corners = DEFAULT_ALIGN_CORNERS  # the model's setting (models/resize.py)
        self.branches = nn.ModuleList(make_layer(BasicBlock, c, c, b) for c, b in zip(channels, num_blocks))
        self.fuse_layers = nn.ModuleList() if n > 1 else None
        for i in range(0 if n == 1 else (n if multi_scale_output else 1)):
            row = nn.ModuleList()
            for j in range(n):
                if j > i:  # lower resolution -> 1x1 conv + BN, bilinear upsample in forward
                    row.append(nn.Sequential(nn.Conv2d(channels[j], channels[i], 1, bias=False), bn(channels[i])))
                elif j == i:
                    row.append(nn.Identity())
                else:  # higher resolution -> (i - j) strided 3x3 convs; ReLU between, none after the last
                    steps = []
                    for k in range(i - j):
                        last = k == i - j - 1
                        out_c = channels[i] if last else channels[j]
                        step = [nn.Conv2d(channels[j], out_c, 3, 2, 1, bias=False), bn(out_c)]
                        if not last:
                            step.append(nn.ReLU(inplace=True))
                        steps.append(nn.Sequential(*step))
                    row.append(nn.Sequential(*steps))
            self.fuse_layers.append(row)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs)]
        if self.fuse_layers is None:
            return xs
        outs = []
        for i, row in enumerate(self.fuse_layers):
            size = xs[i].shape[-2:]
            y = xs[0] if i == 0 else row[0](xs[0])
            for j in range(1, self.num_branches):
                if j == i:
                    t = xs[j]
                elif j > i:
                    t = resize(row[j](xs[j]), size, self.align_corners)
                else:
                    t = row[j](xs[j])
                # the first sum is out of place (y may still be a branch output shared by other rows)
                y = y + t if j == 1 else y.add_(t)
            outs.append(self.relu(y))
        return outs


class StageCfg(NamedTuple):
    """One HRNet stage: ``num_modules`` HighResolutionModules, one block count and one width per branch."""

    num_modules: int
    num_blocks: tuple[int, ...]
    num_channels: tuple[int, ...]


def transition(pre: Sequence[int], cur: Sequence[int]) -> nn.ModuleList:
    """Between stages: 3x3 conv-BN-ReLU where a width changes; new branches start from the lowest-resolution
    previous branch with a chain of strided 3x3 conv-BN-ReLU."""
    layers = nn.ModuleList()
    for i, c in enumerate(cur):
        if i < len(pre):
            if c != pre[i]:
                layers.append(nn.Sequential(nn.Conv2d(pre[i], c, 3, 1, 1, bias=False), bn(c), nn.ReLU(inplace=True)))
            else:
                layers.append(nn.Identity())
        else:
            steps = []
            for j in range(i + 1 - len(pre)):
                out_c = c if j == i - len(pre) else pre[-1]
                steps.append(
                    nn.Sequential(nn.Conv2d(pre[-1], out_c, 3, 2, 1, bias=False), bn(out_c), nn.ReLU(inplace=True))
                )
            layers.append(nn.Sequential(*steps))
    return layers


class HRNet(nn.Module):
    """HRNetV2 backbone: (B, in_channels, H, W) -> list of 4 maps at strides 4, 8, 16, 32 (sizes ceil(H/s), ceil(W/s)).

    Args:
        stage1: Bottleneck stage; uses ``num_blocks[0]`` and ``num_channels[0]`` (output width 4 * num_channels[0]).
        stage2, stage3, stage4: BasicBlock stages with 2, 3 and 4 branches.
        in_channels: channels of the input image (3 for RGB, 1 for gray, 4 for RGB-D/IR, ...).

    Attributes:
        out_channels: widths of the four outputs, e.g. [18, 36, 72, 144] for W18.
        strides: [4, 8, 16, 32].
        default_in_index: [0, 1, 2, 3]; heads use all four maps, resized to stride 4 and concatenated (HRNetV2).
    """

    strides = [4, 8, 16, 32]
    default_in_index = [0, 1, 2, 3]
    fuse_pairs = (("conv1", "bn1"), ("conv2", "bn2"))  # stem (conv, BN) pairs for fuse_conv_bn

    def __init__(self, stage1: StageCfg, stage2: StageCfg, stage3: StageCfg, stage4: StageCfg, in_channels: int = 3):
        super().__init__()
        if not isinstance(in_channels, int) or in_channels < 1:
            raise ContextSegError(f"in_channels must be a positive integer (3 for RGB), got {in_channels!r}")
        for k, cfg in enumerate((stage2, stage3, stage4), start=2):
            if len(cfg.num_channels) != k:
                raise ContextSegError(f"HRNet stage{k} needs {k} branch widths, got {list(cfg.num_channels)}")
        self.in_channels = in_channels
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn1 = bn(64)
        self.conv2 = nn.Conv2d(64, 64, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn2 = bn(64)
        self.relu = nn.ReLU(inplace=True)

        self.layer1 = make_layer(Bottleneck, 64, stage1.num_channels[0], stage1.num_blocks[0])
        pre = [stage1.num_channels[0] * Bottleneck.expansion]
        self.transition1 = transition(pre, stage2.num_channels)
        self.stage2, pre = self._make_stage(stage2)
        self.transition2 = transition(pre, stage3.num_channels)
        self.stage3, pre = self._make_stage(stage3)
        self.transition3 = transition(pre, stage4.num_channels)
        self.stage4, pre = self._make_stage(stage4)  # last module keeps all four outputs (HRNetV2)
        self.out_channels = list(pre)
        self.reset_parameters()

    def reset_parameters(self, init: str = "he") -> None:
        """"he" (default): He-normal (fan_out) conv weights, BN weight 1 and bias 0, which trains better from scratch
        (synthetic demo, 600 steps, 2 seeds: 80.9 / 81.3 val mIoU vs 70.5 / 70.9; docs/fidelity.md); "official":
        conv weights from N(0, 0.001) as the official code, which then loads ImageNet weights over them."""
        if init not in INITS:
            raise ContextSegError(f"unknown HRNet init {init!r}; use one of {', '.join(INITS)}")
        INITS[init](self)

    @staticmethod
    def _make_stage(cfg: StageCfg) -> tuple[nn.Sequential, list[int]]:
        modules = [HighResolutionModule(cfg.num_channels, cfg.num_blocks) for _ in range(cfg.num_modules)]
        return nn.Sequential(*modules), list(cfg.num_channels)

    @staticmethod
    def _transit(layers: nn.ModuleList, xs: list[Tensor]) -> list[Tensor]:
        return [layer(xs[i] if i < len(xs) else xs[-1]) for i, layer in enumerate(layers)]

    def forward(self, x: Tensor) -> list[Tensor]:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ContextSegError(
                f"HRNet expects a (B, {self.in_channels}, H, W) batch, got shape {tuple(x.shape)}; "
                f"build the model with in_channels={x.shape[1] if x.dim() == 4 else '<C>'} or fix the input"
            )
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        xs = [self.layer1(x)]
        xs = self.stage2(self._transit(self.transition1, xs))
        xs = self.stage3(self._transit(self.transition2, xs))
        return self.stage4(self._transit(self.transition3, xs))


def _standard(width: int) -> dict[str, StageCfg]:
    """HRNetV2-W{width}: stage1 4 Bottlenecks of 64; stages 2/3/4 with 1/4/3 modules of 4 BasicBlocks per branch."""
    w = [width, 2 * width, 4 * width, 8 * width]
    return dict(
        stage1=StageCfg(1, (4,), (64,)),
        stage2=StageCfg(1, (4, 4), tuple(w[:2])),
        stage3=StageCfg(4, (4, 4, 4), tuple(w[:3])),
        stage4=StageCfg(3, (4, 4, 4, 4), tuple(w)),
    )


# Stage configs from the official experiment files (experiments/cityscapes/seg_hrnet_w18_small_v1_*.yaml, ...).
HRNET_CONFIGS: dict[str, dict[str, StageCfg]] = {
    "hrnetv2_w18_small_v1": dict(
        stage1=StageCfg(1, (1,), (32,)),
        stage2=StageCfg(1, (2, 2), (16, 32)),
        stage3=StageCfg(1, (2, 2, 2), (16, 32, 64)),
        stage4=StageCfg(1, (2, 2, 2, 2), (16, 32, 64, 128)),
    ),
    "hrnetv2_w18_small_v2": dict(
        stage1=StageCfg(1, (2,), (64,)),
        stage2=StageCfg(1, (2, 2), (18, 36)),
        stage3=StageCfg(3, (2, 2, 2), (18, 36, 72)),
        stage4=StageCfg(2, (2, 2, 2, 2), (18, 36, 72, 144)),
    ),
    "hrnetv2_w18": _standard(18),
    "hrnetv2_w32": _standard(32),
    "hrnetv2_w48": _standard(48),
}


def add_se(net: nn.Module, reduction: int = 16) -> nn.Module:
    """Turn every residual unit of ``net`` into an SE unit (Hu et al. 2018, Fig. 3: the SE block rescales the
    residual branch before the sum with the identity), in place; returns ``net``.

    Each BasicBlock / Bottleneck gets ``SEBlock(C, reduction)`` with C its output width, adding
    2*C*max(1, C // reduction) + max(1, C // reduction) + C parameters per unit. Without it the units are the
    official ones (``se`` is a parameter-free Identity), so default counts and checkpoints are unchanged.
    """
    for m in net.modules():
        if isinstance(m, BasicBlock):
            m.se = SEBlock(m.bn2.num_features, reduction)
        elif isinstance(m, Bottleneck):
            m.se = SEBlock(m.bn3.num_features, reduction)
    return net


def _register(name: str) -> None:
    def build(in_channels: int = 3, se: bool = False, init: str = "he") -> HRNet:
        if not isinstance(se, bool):
            raise ContextSegError(f"se must be True or False, got {se!r}")
        net = HRNet(**HRNET_CONFIGS[name], in_channels=in_channels)
        if init != "he":  # He is drawn in __init__; drawing again would change every seeded model
            net.reset_parameters(init)
        return add_se(net) if se else net

    build.__name__ = name
    build.__doc__ = (
        f"HRNetV2 preset {name!r} (official stage config); returns an HRNet module. "
        f"se=True adds a squeeze-and-excitation block (r = 16) to every residual unit (see add_se); "
        f"init='official' draws conv weights from N(0, 0.001) as the official code (default 'he')."
    )
    BACKBONES.register(name)(build)


for _name in HRNET_CONFIGS:
    _register(_name)
