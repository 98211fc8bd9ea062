#!/usr/bin/env bash
# BASIS on image mixtures (Jayaram & Thickstun 2020): train one NCSN prior on the images →
# separate the fixed test mixtures m = x1 + x2 by annealed Langevin dynamics → PSNR/SSIM
# table beside the mixture-average baseline.
#
#   recipes/images/basis/run.sh                            # digits fallback, minutes
#   dataset=mnist recipes/images/basis/run.sh              # MNIST (a GPU job: see the README)
#
# Variables: dataset (digits | mnist: picks ncsn_<dataset>.yaml here), mnist (the folder of
# the IDX files), exp, mixtures, basis_steps / basis_levels (the paper: 100 steps x 10
# levels), device, stage, stop_stage. Training resumes from $exp/ncsn.pt.
set -euo pipefail
cd "$(dirname "$0")/../../.."
audiosep=.venv/bin/audiosep
python=.venv/bin/python
here=recipes/images/basis
dataset=${dataset:-digits}
mnist=${mnist:-../shared/data/mnist}
exp=${exp:-exp/images/basis_$dataset}
mixtures=${mixtures:-1000}
basis_steps=${basis_steps:-100}
basis_levels=${basis_levels:-10}
device=${device:-cpu}
stage=${stage:-1}
stop_stage=${stop_stage:-2}
case $dataset in
    digits) images=digits; [ "$mixtures" -le 300 ] || mixtures=300 ;;
    mnist) images="mnist:$mnist" ;;
    *) echo "dataset must be digits or mnist, got $dataset" >&2; exit 2 ;;
esac
run_stage() { [ "$1" -ge "$stage" ] && [ "$1" -le "$stop_stage" ]; }
mkdir -p "$exp"

if run_stage 1; then
    echo "stage 1: train an NCSN prior on $images"
    $audiosep train ncsn --images "$images" --config "$here/ncsn_$dataset.yaml" --device "$device" \
        --threads 1 -o "$exp/ncsn.pt"
fi

if run_stage 2; then
    echo "stage 2: BASIS on $mixtures test mixtures (${basis_levels} levels x ${basis_steps} steps)"
    $python benchmarks/images.py --images "$images" --mixtures "$mixtures" --device "$device" \
        --ncsn "$exp/ncsn.pt" --basis-steps "$basis_steps" --basis-levels "$basis_levels" | tee "$exp/table.txt"
fi
