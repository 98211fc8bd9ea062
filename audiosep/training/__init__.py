"""Training: the one loop (`loop.train`) and one small module per model kind.

- `loop`: optimiser, EMA, atomic checkpoints, exact resume, torchrun DDP, validation.
- `mel`: mel-patch datasets shared by the mel priors.
- `ncsn`, `flow`: `audiosep train ncsn|glow|realnvp` on mel patches.
- `images`: image datasets for the image-domain priors (`audiosep train ... --images`).

Adding a model kind adds a module here; the loop stays one piece of code.
"""
from .loop import EMA, seed_everything, train, validation_loss

__all__ = ["EMA", "seed_everything", "train", "validation_loss"]
