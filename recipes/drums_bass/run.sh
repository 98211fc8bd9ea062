#!/usr/bin/env bash
# Drums/bass separation in the latent domain of an LQ-VAE (Mancusi et al., arXiv 2110.05313),
# end to end: synth → LQ-VAE → code priors → separate → evaluate → summary.
#
#   recipes/drums_bass/run.sh                       # every stage
#   stage=3 stop_stage=4 recipes/drums_bass/run.sh  # some stages
#
# Variables (environment): data (the stems dataset; a Slakh2100 folder works too, with
# sources named by instrument class: set sources="drums bass"), exp (outputs), stage,
# stop_stage, device, chains (latent chains, default 64), lqvae_steps / prior_steps (override
# the configs' train.steps), tracks (test tracks separated, default all).
# Run it after `make test` has set up .venv. The synthesized splits never use the reserved
# composers (Haydn, Mozart) nor the MuseScore General soundfonts.
set -euo pipefail
cd "$(dirname "$0")/../.."
audiosep=.venv/bin/audiosep
data=${data:-data/drums_bass}
exp=${exp:-exp/drums_bass}
stage=${stage:-0}
stop_stage=${stop_stage:-4}
device=${device:-cpu}
chains=${chains:-64}
lqvae_steps=${lqvae_steps:-}
prior_steps=${prior_steps:-}
sources=${sources:-drums bass}
here=recipes/drums_bass

run_stage() { [ "$1" -ge "$stage" ] && [ "$1" -le "$stop_stage" ]; }

if run_stage 0; then
    if [ -d "$data" ]; then
        echo "stage 0: $data exists (a synthesized set, or Slakh2100): not rendered again"
    else
        echo "stage 0: synthesize $data (22.05 kHz, as the LQ-VAE)"
        $audiosep synth drums_bass -o "$data" --train 120 --valid 20 --test 20 --duration 10 \
            --sample-rate 22050 --seed 0
    fi
fi

if run_stage 1; then
    echo "stage 1: train the LQ-VAE into $exp/lqvae.pt (resumes)"
    # shellcheck disable=SC2086
    $audiosep train lqvae --data "$data" --sources $sources --config "$here/lqvae.yaml" \
        ${lqvae_steps:+--steps "$lqvae_steps"} --threads 1 --device "$device" -o "$exp/lqvae.pt"
fi

if run_stage 2; then
    echo "stage 2: train one code prior per source into $exp/priors/ (resumes)"
    for source in $sources; do
        $audiosep train transformer --lqvae "$exp/lqvae.pt" --data "$data" --source "$source" \
            --config "$here/transformer.yaml" ${prior_steps:+--steps "$prior_steps"} --threads 1 \
            --device "$device" -o "$exp/priors/$source.pt"
    done
    # the supervised NMF baseline on the same stems, at the same rate
    # shellcheck disable=SC2086
    $audiosep train nmf --data "$data" --sources $sources -o "$exp/nmf_drums_bass.pt" --atoms 64 \
        --sample-rate 22050 --seed 0
fi

if run_stage 3; then
    echo "stage 3: separate the test split"
    priors=()
    for source in $sources; do priors+=("$exp/priors/$source.pt"); done
    $audiosep separate "$data/test" -o "$exp" -n latent --method latent --model "$exp/lqvae.pt" "${priors[@]}" \
        --chains "$chains" --device "$device" >/dev/null
    $audiosep separate "$data/test" -o "$exp" -n nmf --model "$exp/nmf_drums_bass.pt" >/dev/null
fi

if run_stage 4; then
    echo "stage 4: evaluate (BSSEval v4, 1 s windows), the oracles and the summary"
    for system in latent nmf; do
        $audiosep evaluate "$data/test" "$exp/$system" -o "$exp/$system/report" --method "$system"
    done
    for oracle in irm2 mix; do
        $audiosep oracle --method "$oracle" "$data" -o "$exp/oracle_$oracle"
    done
    .venv/bin/python - "$exp" <<'PY'
import sys
from pathlib import Path

import pandas as pd

exp = Path(sys.argv[1])
paths = [*sorted(exp.glob("*/report/summary.csv")), *sorted(exp.glob("oracle_*/summary.csv"))]
summary = pd.concat([pd.read_csv(p) for p in paths])
print(summary.pivot_table(index=["method", "target"], columns="metric", values="score").round(2).to_string())
PY
    $audiosep report "$exp" -o "$exp/report.html"
fi
