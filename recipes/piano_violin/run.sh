#!/usr/bin/env bash
# Piano/violin separation, end to end: synth → train → separate → evaluate → report.
#
#   recipes/piano_violin/run.sh                       # every stage
#   stage=2 stop_stage=3 recipes/piano_violin/run.sh  # some stages
#
# Variables (environment): data (dataset folder), exp (outputs), stage, stop_stage,
# train_ncsn (1 to train the NCSN priors too), ncsn_steps, device. Run it after
# `make test` or `make demo` has set up .venv. The test split comes from held-out pieces; Haydn and Mozart are never used.
set -euo pipefail
cd "$(dirname "$0")/../.."
audiosep=.venv/bin/audiosep
data=${data:-data/piano_violin}
exp=${exp:-exp/piano_violin}
stage=${stage:-0}
stop_stage=${stop_stage:-4}
train_ncsn=${train_ncsn:-0}
ncsn_steps=${ncsn_steps:-40000}
device=${device:-cpu}

run_stage() { [ "$1" -ge "$stage" ] && [ "$1" -le "$stop_stage" ]; }

if run_stage 0; then
    echo "stage 0: synthesize the dataset into $data"
    $audiosep synth piano_violin -o "$data" --train 180 --valid 20 --test 20 --duration 10 --seed 0
fi

if run_stage 1; then
    echo "stage 1: train the models into $exp"
    $audiosep train nmf --data "$data" -o "$exp/nmf_piano_violin.pt" --atoms 64 --seed 0
    # NCSN priors for BASIS: opt in with train_ncsn=1 (hours on a CPU; resumes where it stopped)
    if [ "$train_ncsn" = 1 ]; then
        for source in piano violin; do
            $audiosep train ncsn --data "$data" --source "$source" --preset default \
                --steps "$ncsn_steps" --device "$device" -o "$exp/${source}_ncsn_v2.pt"
        done
    fi
fi

if run_stage 2; then
    echo "stage 2: separate the test mixtures"
    # `separate` names a track after its file (here always mix.wav): one call per track folder
    for track in "$data"/test/*/; do
        name=$(basename "$track")
        rm -rf "$exp/nmf_tmp"
        $audiosep separate "$track/mix.wav" -o "$exp/nmf_tmp" --model "$exp/nmf_piano_violin.pt" --device "$device" >/dev/null
        mkdir -p "$exp/nmf/$name"
        mv "$exp/nmf_tmp/mix/"*.wav "$exp/nmf/$name/"
    done
    rm -rf "$exp/nmf_tmp"
fi

if run_stage 3; then
    echo "stage 3: evaluate (BSSEval v4, 1 s windows) and the oracles"
    $audiosep evaluate "$data/test" "$exp/nmf" -o "$exp/nmf/report" --method nmf
    for oracle in irm2 mel-ideal mix; do
        $audiosep oracle --method "$oracle" "$data" -o "$exp/oracle_$oracle"
    done
fi

if run_stage 4; then
    echo "stage 4: summary table"
    .venv/bin/python - "$exp" <<'PY'
import sys
from pathlib import Path

import pandas as pd

exp = Path(sys.argv[1])
tables = [pd.read_csv(p) for p in [exp / "nmf/report/summary.csv", *sorted(exp.glob("oracle_*/summary.csv"))]]
summary = pd.concat(tables)
print(summary.pivot_table(index=["method", "target"], columns="metric", values="score").round(2).to_string())
PY
fi
