"""iresnet: Invertible Residual Networks and Residual Flows in PyTorch.

The public API, re-exported; nothing is defined here. The library (``nn``, ``ops``,
``transforms``, ``flows``, ``classifiers``, ``certificate``, ``datasets``) never imports the
application (``iresnet.app``: config, presets, training, CLI, plots).

Examples:
    >>> import torch, iresnet
    >>> flow = iresnet.ResidualFlow(2, transforms=2, hidden_features=(16,))
    >>> flow().log_prob(torch.zeros(3, 2)).shape
    torch.Size([3])
    >>> iresnet.certify(flow.eval()).invertible
    True
"""

from . import datasets, flows, nn, ops, transforms
from .certificate import BlockCertificate, Certificate, certify
from .classifiers import HybridClassifier, InvertibleClassifier
from .errors import (
    CheckpointError,
    ConfigError,
    DataError,
    InverseNotConvergedError,
    InverseNotConvergedWarning,
    IResNetError,
    RouletteVarianceWarning,
)
from .flows import Flow, FlowDistribution, MultiscaleResidualFlow, ResidualFlow, StandardNormal
from .nn import (
    CLipSwish,
    DenseLayer,
    LipELU,
    LipSwish,
    SpectralConv2d,
    SpectralLinear,
    lipschitz_bound_of,
    power_iteration,
)
from .ops import (
    ExactLogDet,
    FixedPointInverse,
    InverseDiagnostics,
    LogDetEstimator,
    PowerSeriesLogDet,
    RussianRouletteLogDet,
    StratifiedRouletteLogDet,
    banach_bound,
    exact_logdet,
    fixed_point_solve,
)
from .transforms import (
    ActNorm,
    ComposedTransform,
    Dequantize,
    InvertibleResidualBlock,
    Logit,
    Squeeze,
    Standardize,
    Transform,
    swap_logdets,
)

__version__ = "0.2.0"

__all__ = [
    "ActNorm",
    "BlockCertificate",
    "CLipSwish",
    "Certificate",
    "CheckpointError",
    "ComposedTransform",
    "ConfigError",
    "DataError",
    "DenseLayer",
    "Dequantize",
    "ExactLogDet",
    "FixedPointInverse",
    "Flow",
    "FlowDistribution",
    "HybridClassifier",
    "IResNetError",
    "InverseDiagnostics",
    "InverseNotConvergedError",
    "InverseNotConvergedWarning",
    "InvertibleClassifier",
    "InvertibleResidualBlock",
    "LipELU",
    "LipSwish",
    "LogDetEstimator",
    "Logit",
    "MultiscaleResidualFlow",
    "PowerSeriesLogDet",
    "ResidualFlow",
    "RouletteVarianceWarning",
    "RussianRouletteLogDet",
    "SpectralConv2d",
    "SpectralLinear",
    "Squeeze",
    "Standardize",
    "StandardNormal",
    "StratifiedRouletteLogDet",
    "Transform",
    "banach_bound",
    "certify",
    "datasets",
    "exact_logdet",
    "fixed_point_solve",
    "flows",
    "lipschitz_bound_of",
    "nn",
    "ops",
    "power_iteration",
    "swap_logdets",
    "transforms",
]
