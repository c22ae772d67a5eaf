"""iresnet: Invertible Residual Networks and Residual Flows in PyTorch.

The public API, re-exported; nothing is defined here. The library (``nn``, ``ops``,
``transforms``, ``flows``, ``classifiers``, ``certificate``, ``datasets``) never imports the
application (``iresnet.app``: config, presets, training, CLI, plots). The one bridge is
``iresnet.load_run(path)`` (a trained run folder: its model, config, data and task), which is
resolved on first use, so ``import iresnet`` loads no application code.

Examples:
    >>> import torch, iresnet
    >>> flow = iresnet.ResidualFlow(2, transforms=2, hidden_features=(16,))
    >>> flow().log_prob(torch.zeros(3, 2)).shape
    torch.Size([3])
    >>> iresnet.certify(flow.eval()).invertible
    True
"""

import importlib
from typing import Any

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
from .flows import (
    DiagonalNormal,
    Flow,
    FlowDistribution,
    MultiscaleResidualFlow,
    ResidualFlow,
    StandardNormal,
)
from .nn import (
    CLipSwish,
    CPila,
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
    compile_after_first_call,
    compile_options,
    exact_logdet,
    fixed_point_solve,
)
from .transforms import (
    ActNorm,
    ComposedTransform,
    ConditionalAffine,
    Dequantize,
    InvertibleResidualBlock,
    Logit,
    MonotoneBlock,
    Squeeze,
    Standardize,
    Transform,
    compile_blocks,
    swap_logdets,
)

__version__ = "0.3.0"

__all__ = [
    "load_run",
    "ActNorm",
    "BlockCertificate",
    "CLipSwish",
    "CPila",
    "Certificate",
    "CheckpointError",
    "ComposedTransform",
    "ConditionalAffine",
    "ConfigError",
    "DataError",
    "DenseLayer",
    "Dequantize",
    "DiagonalNormal",
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
    "MonotoneBlock",
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
    "compile_after_first_call",
    "compile_blocks",
    "compile_options",
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


def __getattr__(name: str) -> Any:
    """``iresnet.load_run``: [`iresnet.app.runs.load_run`][iresnet.app.runs.load_run], imported
    on first use (the library itself never imports the application)."""
    if name == "load_run":
        return importlib.import_module("iresnet.app.runs").load_run
    raise AttributeError(f"module 'iresnet' has no attribute {name!r}")
