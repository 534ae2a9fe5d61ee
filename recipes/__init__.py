"""Compression recipes (YAML), shipped in the package as ``mope_deploy.recipes`` (see pyproject.toml and
mope_deploy/resources.py). Data only: this file makes the folder an importable package for importlib.resources."""
