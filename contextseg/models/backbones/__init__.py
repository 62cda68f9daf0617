"""Backbones: ``backbone(x) -> list of feature maps`` with ``out_channels`` and ``strides`` attributes."""
from .cifar_resnet import CIFAR_DEPTHS, CifarResNet
from .hrnet import HRNET_CONFIGS, HRNet, StageCfg
from .resnet import RESNET_LAYERS, ResNet
from .vgg import VGG16

__all__ = ["CifarResNet", "CIFAR_DEPTHS", "HRNet", "HRNET_CONFIGS", "StageCfg", "ResNet", "RESNET_LAYERS", "VGG16"]
