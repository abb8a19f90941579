"""kd_det2: knowledge distillation for Detectron2 object detectors."""
from setuptools import find_packages, setup

setup(
    name="kd_det2",
    version="0.1.0",
    description="Knowledge distillation of object detectors, as a Detectron2 extension",
    packages=find_packages(include=["kd_det2", "kd_det2.*"]),
    python_requires=">=3.10",
    # detectron2 is a requirement too, but it is not on the package index under its own name:
    # `make install` installs it (see README.md).
    install_requires=["torch>=2.4", "torchvision", "fvcore", "iopath", "pycocotools", "yacs",
                      "omegaconf>=2.1,<2.4", "opencv-python-headless", "numpy"],
)
