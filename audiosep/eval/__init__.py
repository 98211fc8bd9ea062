"""Evaluation: BSSEval v4 matching museval (`bsseval`), SI-SDR/SDR/PSNR/SSIM with best
permutation (`metrics`, and `image_separation_scores` for image mixtures), museval-compatible long
tables, JSON and summaries (`report`), the listening report (`listening`), and the Fréchet
distance of classifier features for image samples (`frechet`).

Import from the submodules: `bsseval` stays free of torch and pandas, so a process that
only scores audio stays small.
"""
