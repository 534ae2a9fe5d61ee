"""Deployment templates (Triton config templates, TensorRT build profiles), shipped in the package as
``mope_deploy.templates`` (see pyproject.toml and mope_deploy/resources.py). Data only: this file makes the folder an
importable package for importlib.resources."""
