"""iresnet: Invertible Residual Networks and Residual Flows in PyTorch.

The public API, re-exported; nothing is defined here.
"""

from .activations import LipELU, LipSwish
from .certificate import BlockCertificate, Certificate, certify
from .errors import (
    CheckpointError,
    ConfigError,
    DataError,
    InverseNotConvergedError,
    InverseNotConvergedWarning,
    IResNetError,
)
from .flow import Flow, FlowDistribution
from .inverse import FixedPointInverse, InverseDiagnostics, banach_bound, fixed_point_solve
from .layers import ActNorm, InvertibleResidualBlock, Squeeze
from .lipschitz import SpectralConv2d, SpectralLinear, lipschitz_bound_of, power_iteration
from .logdet import ExactLogDet, PowerSeriesLogDet, RussianRouletteLogDet, exact_logdet

__version__ = "0.1.0"

__all__ = [
    "ActNorm",
    "BlockCertificate",
    "Certificate",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "ExactLogDet",
    "FixedPointInverse",
    "Flow",
    "FlowDistribution",
    "IResNetError",
    "InverseDiagnostics",
    "InverseNotConvergedError",
    "InverseNotConvergedWarning",
    "InvertibleResidualBlock",
    "LipELU",
    "LipSwish",
    "PowerSeriesLogDet",
    "RussianRouletteLogDet",
    "SpectralConv2d",
    "SpectralLinear",
    "Squeeze",
    "banach_bound",
    "certify",
    "exact_logdet",
    "fixed_point_solve",
    "lipschitz_bound_of",
    "power_iteration",
]
