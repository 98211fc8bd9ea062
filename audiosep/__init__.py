"""audiosep: audio source separation with deep generative priors."""

__version__ = "0.1.0"
