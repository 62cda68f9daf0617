"""Weight initialisation shared by the backbones."""
from torch import nn


def official_hrnet_init(module: nn.Module) -> None:
    """The official HRNet-OCR ``init_weights``: conv weights from N(0, 0.001), BN weight 1 and bias 0 (the official
    code then loads ImageNet weights over the backbone; from scratch this is the whole initialisation)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, std=0.001)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def he_init(module: nn.Module) -> None:
    """He-normal (fan_out) conv weights, BN weight 1 and bias 0 (torchvision's init), for every submodule."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
