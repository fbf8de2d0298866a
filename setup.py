"""Packaging that pyproject.toml cannot say: the repository's configs/ ships as dvt_ms/configs
(package data), so the README's ``configs/...`` commands work from an installed package."""
from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["dvt_ms*"]) + ["dvt_ms.configs"],
    package_dir={"dvt_ms.configs": "configs"},
    package_data={"dvt_ms.models.cpu_kernels": ["*.cc"], "dvt_ms.configs": ["*.yaml"]},
)
