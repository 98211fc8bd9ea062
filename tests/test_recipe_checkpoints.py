"""The resumable training states the recipes keep in the repository (`recipes/*/checkpoints/`):
one file per model, within the size a committed binary may weigh, holding what a resume needs
(optimiser state with bfloat16 moments, float32 weights and EMA, its log beside it) for the front end or image
domain its recipe trains on."""
from pathlib import Path

import pytest
import torch

from audiosep.priors.base import Domain, load_checkpoint, load_prior
from audiosep.spectral.frontend import get_frontend
from audiosep.training.log import log_path, read_log

RECIPES = Path(__file__).parents[1] / "recipes"
MB = 1e6
# checkpoint: (the recipe's config, its size limit, the domain it must hold)
KEPT = {
    "piano_violin/checkpoints/piano_ncsn_long.pt": ("piano_violin/ncsn_long.yaml", 30 * MB, "mel"),
    "piano_violin/checkpoints/violin_ncsn_long.pt": ("piano_violin/ncsn_long.yaml", 30 * MB, "mel"),
    "images/basis/checkpoints/ncsn_mnist.pt": ("images/basis/ncsn_mnist.yaml", 10 * MB, "mnist"),
}


def test_every_kept_checkpoint_is_listed_here():
    assert {str(p.relative_to(RECIPES)) for p in RECIPES.glob("*/**/checkpoints/*.pt")} == set(KEPT)


@pytest.mark.parametrize("name", sorted(KEPT))
def test_a_kept_checkpoint_is_small_resumable_and_of_its_recipe_s_domain(name):
    config, limit, domain = KEPT[name]
    path = RECIPES / name
    assert path.stat().st_size <= limit and (RECIPES / config).is_file()
    payload = load_checkpoint(path)
    assert payload["optimizer"] is not None and payload["step"] > 0
    assert payload["extra"]["train_config"]["state_dtype"] == "bf16"
    moments = [v for s in payload["optimizer"]["state"].values() for k, v in s.items() if k != "step"]
    assert {v.dtype for v in moments} == {torch.bfloat16}
    assert {v.dtype for v in (*payload["ema"].values(), *payload["state_dict"].values())
            if v.is_floating_point()} == {torch.float32}
    expected = Domain.mel(get_frontend("default")) if domain == "mel" else Domain.image((1, 28, 28), (0.0, 1.0))
    load_prior(path, expected_domain=expected)
    rows = read_log(log_path(path))  # the curve travels with the state
    assert rows and rows[-1]["step"] <= payload["step"]
