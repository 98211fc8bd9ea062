#!/usr/bin/env bash
# VAE-BSS on image mixtures (Neri, Badeau & Depalle 2021): train on mixtures only → separate
# the fixed test mixtures → one PSNR/SSIM table beside the mixture-average baseline.
#
#   recipes/images/vae_bss/run.sh                          # digits fallback, minutes
#   dataset=mnist recipes/images/vae_bss/run.sh            # MNIST (hours on a 2-core CPU)
#   dataset=mnist mnist=/path/to/mnist stage=2 recipes/images/vae_bss/run.sh
#
# Variables: dataset (digits | mnist: picks the configs <dataset>_k2.yaml / <dataset>_k3.yaml
# here), mnist (the folder of the four IDX files), exp (outputs), mixtures (test mixtures),
# device, stage, stop_stage. Training resumes from the checkpoints in $exp.
set -euo pipefail
cd "$(dirname "$0")/../../.."
recipe=vae_bss
. recipes/images/common.sh
mixtures=${mixtures:-1000}

if run_stage 1; then
    for k in 2 3; do
        echo "stage 1: train VAE-BSS with K = $k on mixtures of $images"
        $audiosep train vae --images "$images" --config "$here/${dataset}_k$k.yaml" --device "$device" \
            --threads 1 -o "$exp/vae_k$k.pt"
    done
fi

if run_stage 2; then
    echo "stage 2: separate $mixtures test mixtures and score them"
    $python benchmarks/images.py --images "$images" --mixtures "$mixtures" --device "$device" \
        --vae K2="$exp/vae_k2.pt" K3="$exp/vae_k3.pt" | tee "$exp/table.txt"
fi
