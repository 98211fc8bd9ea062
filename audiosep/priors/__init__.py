"""Priors: density / score models over one domain (mel patches or images).

Every prior implements the protocol of `base.Prior`; `load_prior` rebuilds any
registered prior from its checkpoint.
"""
from .base import (
    Domain,
    Prior,
    build_from_checkpoint,
    export_prior,
    load_checkpoint,
    load_prior,
    register_prior,
    registered_priors,
    save_checkpoint,
    sigma_per_sample,
)
from .ncsn import NCSNConfig, NCSNv1, NCSNv2, build_ncsn, dsm_loss, geometric_sigmas

__all__ = [
    "Domain",
    "NCSNConfig",
    "NCSNv1",
    "NCSNv2",
    "Prior",
    "build_from_checkpoint",
    "build_ncsn",
    "dsm_loss",
    "export_prior",
    "geometric_sigmas",
    "load_checkpoint",
    "load_prior",
    "register_prior",
    "registered_priors",
    "save_checkpoint",
    "sigma_per_sample",
]
