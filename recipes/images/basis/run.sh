#!/usr/bin/env bash
# BASIS on image mixtures (Jayaram & Thickstun 2020): train an NCSN and a Glow prior on the
# images → separate the fixed test mixtures by annealed Langevin dynamics (NCSN: m = x1 + x2
# on [0, 1]; Glow: m = (x1 + x2)/2 on centred images) → PSNR/SSIM table beside the
# mixture-average baseline.
#
#   recipes/images/basis/run.sh                            # digits fallback, minutes
#   dataset=mnist mnist=DIR recipes/images/basis/run.sh    # MNIST: days on a CPU, hours on a GPU
#   dataset=mnist mnist=DIR ncsn_steps=N train_glow=0 stage=1 stop_stage=1 recipes/images/basis/run.sh
#                                                          # a session's share of the NCSN run (to step N;
#                                                          # it resumes from the kept checkpoint)
#
# Variables: dataset (digits | mnist: picks ncsn_<dataset>.yaml and glow_<dataset>.yaml here), mnist (the folder of
# the IDX files), exp, mixtures, basis_steps / basis_levels (the paper: 100 steps x 10
# levels), train_glow (0: no Glow prior in stage 1), ncsn (the NCSN checkpoint; for MNIST recipes/images/basis/checkpoints/ncsn_mnist.pt, committed
# so the CPU run goes on across sessions), ncsn_steps, device, stage, stop_stage. Training resumes
# from $ncsn and $exp/glow.pt.
set -euo pipefail
cd "$(dirname "$0")/../../.."
recipe=basis
. recipes/images/common.sh
mixtures=${mixtures:-1000}
basis_steps=${basis_steps:-100}
basis_levels=${basis_levels:-10}
# the NCSN checkpoint: for MNIST the resumable one kept in the repository (a CPU run spans sessions:
# each session goes on from the committed state and commits it again); elsewhere under $exp
if [ "$dataset" = mnist ]; then ncsn_default=$here/checkpoints/ncsn_mnist.pt; else ncsn_default=$exp/ncsn.pt; fi
ncsn=${ncsn:-$ncsn_default}
ncsn_steps=${ncsn_steps:-}  # default: train.steps of ncsn_<dataset>.yaml; fewer to stop a session's share early
train_glow=${train_glow:-1}  # 0: stage 1 trains the NCSN only

if run_stage 1; then
    echo "stage 1: train an NCSN prior on $images"
    $audiosep train ncsn --images "$images" --config "$here/ncsn_$dataset.yaml" --device "$device" \
        ${ncsn_steps:+--steps "$ncsn_steps"} --threads 1 -o "$ncsn"
    if [ "$train_glow" = 1 ]; then
        echo "stage 1: train a sigma-conditioned Glow prior on $images"
        $audiosep train glow --images "$images" --config "$here/glow_$dataset.yaml" --device "$device" \
            --threads 1 -o "$exp/glow.pt"
    fi
fi

if run_stage 2; then
    echo "stage 2: BASIS on $mixtures test mixtures (${basis_levels} levels x ${basis_steps} steps)"
    glow=()  # the Glow row only when its prior was trained
    [ -f "$exp/glow.pt" ] && glow=(--glow "$exp/glow.pt")
    $python benchmarks/images.py --images "$images" --mixtures "$mixtures" --device "$device" \
        --ncsn "$ncsn" "${glow[@]}" --basis-steps "$basis_steps" --basis-levels "$basis_levels" | tee "$exp/table.txt"
fi
