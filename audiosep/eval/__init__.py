"""Evaluation: BSSEval v4 matching museval (`bsseval`), SI-SDR/SDR/PSNR/SSIM with best
permutation (`metrics`), museval-compatible long tables, JSON and summaries (`report`).

Import from the submodules: `bsseval` stays free of torch and pandas, so a process that
only scores audio stays small.
"""
