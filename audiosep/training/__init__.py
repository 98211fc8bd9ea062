"""Training: the one loop (`loop.train`) and one small module per model kind.

- `loop`: optimiser, EMA, atomic checkpoints, exact resume, torchrun DDP, validation.
- `mel`: mel-patch datasets shared by the mel priors.
- `ncsn`, `flow`: `audiosep train ncsn|glow|realnvp` on mel patches.
- `images`: image datasets for the image-domain priors (`audiosep train ... --images`).
- `lqvae`: `audiosep train lqvae` on waveform crops of every source (and the stored sum table).
- `codes`: `audiosep train transformer`, a code prior over one source's LQ-VAE codes.

Adding a model kind adds a module here; the loop stays one piece of code.
"""
from .loop import EMA, seed_everything, train, validation_loss

__all__ = ["EMA", "seed_everything", "train", "validation_loss"]
