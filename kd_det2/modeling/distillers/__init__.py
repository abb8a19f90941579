"""Distillers, one file per method, registered in ``KD_DISTILLER_REGISTRY`` on import."""

from .base import (
    KD_DISTILLER_REGISTRY,
    Distiller,
    build_distillers,
    check_features,
    registered_distillers,
)
from .baselines import FitNet, LogitKD
from .gkd import GKD
from .hgd import HGD
from .ld import LD
from .pgd import PGD
from .rm_pfi import PFI, RM

__all__ = [
    "KD_DISTILLER_REGISTRY",
    "Distiller",
    "FitNet",
    "GKD",
    "HGD",
    "LD",
    "LogitKD",
    "PFI",
    "PGD",
    "RM",
    "build_distillers",
    "check_features",
    "registered_distillers",
]
