"""Models and their registry (timm style): ``create_model(name, num_classes=10, width=1.0, **kwargs)``.

Factories pass extra kwargs through: ``stem``, ``layers``, ``block`` to :class:`ResNet`; ``stem``
(``cifar``: 32x32 images in 4-pixel patches, ``imagenet``: 224x224 in 16-pixel ones), ``pool``,
``depth``, ``shared_first`` / ``shared_last`` to :class:`VisionTransformer`. Every model implements the
partitionable-model protocol (:mod:`resist.models.protocol`); :func:`residual_stack` makes one from
user modules.
"""

from __future__ import annotations

# Importing each model module registers its factories (a decorator beside the class they build).
from resist.models import gpt, resnet, vit, yolo  # noqa: F401
from resist.models.protocol import ProtocolError, check_model
from resist.models.registry import create_model, describe_model, list_models, register_model
from resist.models.resnet import ResNet
from resist.models.stack import ResidualStack, ScaledResidual, residual_stack
from resist.models.vit import STEMS, VisionTransformer
# The registered factories stay importable from the package (``--model resist.models:vit_tiny``).
from resist.models.gpt import gpt_char  # noqa: F401
from resist.models.resnet import (paper_resnet, paper_resnet101, paper_resnet101_post, paper_resnet152,  # noqa: F401
                                  paper_resnet200, preact_resnet, preact_resnet50, preact_resnet101, preact_resnet152,
                                  preact_resnet200, resnet, resnet50, resnet101, resnet152, resnet200)
from resist.models.vit import vit_small, vit_tiny  # noqa: F401
from resist.models.yolo import yolo_resnet, yolo_resnet101, yolo_resnet152, yolo_resnet200  # noqa: F401

__all__ = ["ProtocolError", "ResNet", "ResidualStack", "STEMS", "ScaledResidual", "VisionTransformer", "check_model",
           "create_model", "describe_model", "list_models", "register_model", "residual_stack"]
