"""Evaluation: BSSEval v4 matching museval (`bsseval`), SI-SDR/SDR/PSNR/SSIM with best
permutation (`metrics`), museval-compatible long tables, JSON and summaries (`report`)."""
from .bsseval import bss_eval_v4
from .metrics import best_permutation, psnr, sdr, si_sdr, ssim
from .report import evaluate_dirs, evaluate_track, score_track, summarize, write_reports

__all__ = [
    "bss_eval_v4", "best_permutation", "evaluate_dirs", "evaluate_track", "psnr", "score_track",
    "sdr", "si_sdr", "ssim", "summarize", "write_reports",
]
