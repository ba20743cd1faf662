"""The model zoo: LeNet-5, CIFAR VGG / ResNet / MobileNetV2 / DenseNet.

``create_model(name, num_classes=10, **kwargs)`` builds a registered model and
records ``edgeslim.info(model).arch``; ``list_models()`` names them;
``@register_model("name")`` adds one (a factory function with JSON-serialisable
keyword arguments).
"""
from __future__ import annotations

# Importing the family modules registers their models.
from edgeslim.models import densenet, dsnet, lenet, mobilenetv2, resnet, vgg  # noqa: F401
from edgeslim.models.densenet import DenseNetCifar
from edgeslim.models.factory import MODELS, create_model, list_models, register_model
from edgeslim.models.lenet import LeNet5, LeNet5Caffe
from edgeslim.models.mobilenetv2 import MobileNetV2
from edgeslim.models.resnet import BasicBlock, CifarResNet
from edgeslim.models.vgg import VGG

__all__ = [
    "MODELS",
    "VGG",
    "BasicBlock",
    "CifarResNet",
    "DenseNetCifar",
    "LeNet5",
    "LeNet5Caffe",
    "MobileNetV2",
    "create_model",
    "list_models",
    "register_model",
]
