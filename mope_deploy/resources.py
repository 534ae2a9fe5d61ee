"""Data files shipped inside the package, read with :mod:`importlib.resources` (works from a checkout, an
editable install and a wheel alike).

In the repository they live in top-level folders, mapped into the package by ``pyproject.toml``
(``[tool.setuptools.package-dir]``): ``recipes/`` -> ``mope_deploy.recipes`` (compression recipes) and
``export/`` -> ``mope_deploy.templates`` (Triton config templates, TensorRT build profiles).
"""

from __future__ import annotations

from importlib import resources
from importlib.abc import Traversable

from .errors import MopeError

RECIPES = "mope_deploy.recipes"
TEMPLATES = "mope_deploy.templates"


class ResourceError(MopeError, FileNotFoundError):
    """A data file the package should ship is missing (a broken install)."""


def resource(package: str, *parts: str) -> Traversable:
    """The shipped file ``parts`` under ``package`` (:data:`RECIPES` or :data:`TEMPLATES`); a clear error
    when the install lacks it."""
    try:
        node = resources.files(package).joinpath(*parts)
    except ModuleNotFoundError:
        node = None
    if node is None or not node.is_file():
        raise ResourceError(f"{'/'.join(parts)} is missing from {package}: the mope-deploy install is incomplete "
                            "(reinstall it: pip install mope-deploy, or pip install -e . in a checkout)")
    return node


def read_text(package: str, *parts: str) -> str:
    """Text of a shipped file (see :func:`resource`)."""
    return resource(package, *parts).read_text(encoding="utf-8")


def listing(package: str, suffix: str = "") -> list[str]:
    """Names of the shipped files in ``package`` ending in ``suffix`` (sorted)."""
    try:
        return sorted(p.name for p in resources.files(package).iterdir() if p.is_file() and p.name.endswith(suffix))
    except ModuleNotFoundError:
        return []


__all__ = ["RECIPES", "TEMPLATES", "ResourceError", "resource", "read_text", "listing"]
