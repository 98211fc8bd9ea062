#!/usr/bin/env bash
# Piano/violin separation, end to end: synth → train → separate → evaluate → report.
#
#   recipes/piano_violin/run.sh                       # every stage
#   stage=2 stop_stage=3 recipes/piano_violin/run.sh  # some stages
#
# Variables (environment): data (dataset folder), exp (outputs), stage, stop_stage,
# train_ncsn / train_glow (1 to train the NCSN / Glow priors too; then BASIS is separated and
# scored beside NMF with each: from the mixture, and started from the NMF stems), ncsn_steps, device. Run it after
# `make test` or `make demo` has set up .venv. The test split comes from held-out pieces; Haydn and Mozart are never used.
set -euo pipefail
cd "$(dirname "$0")/../.."
audiosep=.venv/bin/audiosep
data=${data:-data/piano_violin}
exp=${exp:-exp/piano_violin}
stage=${stage:-0}
stop_stage=${stop_stage:-4}
train_ncsn=${train_ncsn:-0}
train_glow=${train_glow:-0}
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
                --config recipes/piano_violin/ncsn.yaml --steps "$ncsn_steps" --threads 1 \
                --device "$device" -o "$exp/${source}_ncsn_v2.pt"
            # the weights-only copy (EMA weights, no optimiser state): what audiosep/pretrained/
            # ncsn_piano_violin/ bundles (made with ncsn_steps=5000, see its README)
            $audiosep export "$exp/${source}_ncsn_v2.pt" -o "$exp/ncsn_piano_violin/$source.pt"
        done
    fi
    # Glow priors (#5): a per-σ bundle and one σ-conditioned flow per source (train_glow=1)
    if [ "$train_glow" = 1 ]; then
        for source in piano violin; do
            for mode in bundle sigma; do
                $audiosep train glow --data "$data" --source "$source" --preset default \
                    --config "recipes/piano_violin/glow_$mode.yaml" --threads 1 --device "$device" \
                    -o "$exp/${source}_glow_$mode.pt"
            done
        done
    fi
fi

# separate_test NAME ARGS...: `audiosep separate ARGS` on every test mixture into $exp/NAME/<track>/
# (`separate` names its output after the input file, here always mix.wav: one call per track)
separate_test() {
    local name=$1; shift
    for track in "$data"/test/*/; do
        rm -rf "$exp/${name}_tmp"
        $audiosep separate "$track/mix.wav" -o "$exp/${name}_tmp" --device "$device" "$@" >/dev/null
        mkdir -p "$exp/$name/$(basename "$track")"
        mv "$exp/${name}_tmp/mix/"*.wav "$exp/$name/$(basename "$track")/"
    done
    rm -rf "$exp/${name}_tmp"
}

# BASIS runs for each kind of prior whose two checkpoints exist (train_ncsn=1, train_glow=1).
# `--model piano_ncsn_v2.pt ...` would name the stems piano_ncsn_v2.wav, so the checkpoints
# are linked as $exp/priors_KIND/{piano,violin}.pt.
link_priors() {  # link_priors KIND: true when both checkpoints of KIND exist
    [ -f "$exp/piano_$1.pt" ] && [ -f "$exp/violin_$1.pt" ] || return 1
    mkdir -p "$exp/priors_$1"
    for source in piano violin; do
        ln -sf "$(realpath "$exp/${source}_$1.pt")" "$exp/priors_$1/$source.pt"
    done
}

if run_stage 2; then
    echo "stage 2: separate the test mixtures"
    separate_test nmf --model "$exp/nmf_piano_violin.pt"
    for kind in ncsn_v2 glow_bundle glow_sigma; do
        if link_priors "$kind"; then
            separate_test "basis_$kind" --model "$exp/priors_$kind/piano.pt" "$exp/priors_$kind/violin.pt" \
                --init mixture
            separate_test "basis_${kind}_nmf" --model "$exp/priors_$kind/piano.pt" "$exp/priors_$kind/violin.pt" \
                --init nmf --init-model "$exp/nmf_piano_violin.pt"
        fi
    done
fi

if run_stage 3; then
    echo "stage 3: evaluate (BSSEval v4, 1 s windows) and the oracles"
    for system in nmf basis_{ncsn_v2,glow_bundle,glow_sigma}{,_nmf}; do
        if [ -d "$exp/$system" ]; then
            $audiosep evaluate "$data/test" "$exp/$system" -o "$exp/$system/report" --method "$system"
        fi
    done
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
tables = [pd.read_csv(p) for p in [*sorted(exp.glob("*/report/summary.csv")), *sorted(exp.glob("oracle_*/summary.csv"))]]
summary = pd.concat(tables)
print(summary.pivot_table(index=["method", "target"], columns="metric", values="score").round(2).to_string())
PY
fi
