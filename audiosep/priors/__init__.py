"""Priors: density / score models over one domain (mel patches, images, waveforms or codes).

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
from .transformer import CodePriorConfig, CodeTransformer, code_nll
from .vqvae import LQVAE, LQVAEConfig, LQVAELoss, LQVAELossConfig, linearity, load_sum_table, sum_table

__all__ = [
    "CodePriorConfig",
    "CodeTransformer",
    "Domain",
    "LQVAE",
    "LQVAEConfig",
    "LQVAELoss",
    "LQVAELossConfig",
    "NCSNConfig",
    "NCSNv1",
    "NCSNv2",
    "Prior",
    "build_from_checkpoint",
    "build_ncsn",
    "code_nll",
    "dsm_loss",
    "export_prior",
    "geometric_sigmas",
    "linearity",
    "load_checkpoint",
    "load_prior",
    "load_sum_table",
    "register_prior",
    "registered_priors",
    "save_checkpoint",
    "sigma_per_sample",
    "sum_table",
]
