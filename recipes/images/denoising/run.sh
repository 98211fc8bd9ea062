#!/usr/bin/env bash
# Denoising deep generative models (Loaiza-Ganem et al. 2022) with VAEs and Glow flows: vanilla, ND
# (noise in training), TD (ND + Tweedie denoising of the samples) and CD (sigma as an input) → one
# table of Fréchet distances of classifier features and test log-likelihoods (VAE: ELBO; flow: exact).
#
#   recipes/images/denoising/run.sh                 # digits fallback, minutes
#   dataset=mnist recipes/images/denoising/run.sh   # MNIST
#
# Variables: dataset (digits | mnist: picks <dataset>_{vanilla,nd,cd}.yaml and
# <dataset>_flow_{vanilla,nd,cd}.yaml here), mnist (the IDX folder), exp, samples, steps (override
# every model's training steps, e.g. for a smoke run), device, stage, stop_stage. Trainings resume
# from $exp (a finished model is read back, not retrained).
set -euo pipefail
cd "$(dirname "$0")/../../.."
recipe=denoising
. recipes/images/common.sh
samples=${samples:-5000}
steps_arg=()
[ -n "${steps:-}" ] && steps_arg=(--steps "$steps")

if run_stage 1; then
    for variant in vanilla nd cd; do
        echo "stage 1: train the $variant VAE on $images"
        $audiosep train vae --images "$images" --config "$here/${dataset}_$variant.yaml" --device "$device" \
            --threads 1 "${steps_arg[@]}" -o "$exp/vae_$variant.pt"
        echo "stage 1: train the $variant Glow on $images"
        $audiosep train glow --images "$images" --config "$here/${dataset}_flow_$variant.yaml" --device "$device" \
            --threads 1 "${steps_arg[@]}" -o "$exp/flow_$variant.pt"
    done
fi

if run_stage 2; then
    echo "stage 2: sample every model and score the samples"
    $python benchmarks/denoising.py --images "$images" --samples "$samples" \
        --vae vanilla="$exp/vae_vanilla.pt" nd="$exp/vae_nd.pt" cd="$exp/vae_cd.pt" \
        --flow vanilla="$exp/flow_vanilla.pt" nd="$exp/flow_nd.pt" cd="$exp/flow_cd.pt" | tee "$exp/table.txt"
fi
