"""The model zoo: the ReSTE paper's CIFAR-10 and ImageNet BNNs, small CPU models, and their float twins.

>>> from reste import models
>>> models.list_models()[:3]
['digits', 'digits_1w1a', 'fmnist_vgg']
>>> net = models.create("resnet20_1w1a", estimator="reste", estimator_options={"o_end": 3.0})
>>> models.count_parameters(net)
{'total': 269850, 'binary': 267264}

Binary models (``*_1w1a``) binarize every 3x3 convolution except the stem with
``reste.BinaryConv2d`` (no bias); the stem, the 1x1 downsample convolutions, the
BatchNorm1d and the final Linear stay full precision. Each has a full-precision
twin of the same architecture (``model_info(name)["twin"]``). Add a model with
:func:`register_model` on a keyword-only factory ``fn(*, num_classes, conv)``.
"""

from ..datasets import DATASETS  # the built-in data sets (reste.datasets.dataset_names(): the registered ones too)
from . import cifar, imagenet, small  # noqa: F401  (register the models)
from .registry import ConvBuilder, create, defined_in, list_models, model_info, model_keywords, register_model
from .summary import count_parameters, describe, format_summary, format_totals, layer_summary, summary_totals

__all__ = [
    "DATASETS", "ConvBuilder", "create", "defined_in", "list_models", "model_info", "model_keywords", "register_model",
    "count_parameters", "describe", "layer_summary", "format_summary", "summary_totals", "format_totals",
]
