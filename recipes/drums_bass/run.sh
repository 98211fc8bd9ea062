#!/usr/bin/env bash
# Drums/bass separation in the latent domain of an LQ-VAE (Mancusi et al., arXiv 2110.05313),
# end to end: synth → LQ-VAE → code priors → separate → evaluate → summary.
#
#   recipes/drums_bass/run.sh                       # every stage
#   stage=3 stop_stage=4 recipes/drums_bass/run.sh  # some stages
#   stage=5 recipes/drums_bass/run.sh               # only the honest folds
#
# Variables (environment): data (the FluidR3 dataset: its test split is scored), data_real (the
# augmented multi-soundfont set the models train on), data_unseen (the test excerpts of $data
# rendered with TimGM6mb, a soundfont no model is trained on), train_data (default $data_real;
# $data trains FluidR3-only models, as before session 16; a Slakh2100 folder works too, with
# sources named by instrument class: set data=train_data=SLAKH sources="drums bass"), prior_data
# (the code priors' and NMF's datasets, default $train_data; several, space-separated, pool their
# tracks: docs/results.md tries more composers this way), exp
# (outputs), stage, stop_stage, device, chains (latent chains, default 64), lqvae_steps /
# prior_steps (override the configs' train.steps), folds (stage 5's honest folds).
# Run it after `make test` has set up .venv. The synthesized splits never use the reserved
# composers (Haydn, Mozart) nor the MuseScore General soundfonts.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=recipes/common.sh
source recipes/common.sh
audiosep=.venv/bin/audiosep
data=${data:-data/drums_bass}
data_real=${data_real:-data/drums_bass_real}
data_unseen=${data_unseen:-data/drums_bass_unseen}
train_data=${train_data:-$data_real}
prior_data=${prior_data:-$train_data}
exp=${exp:-exp/drums_bass}
stage=${stage:-0}
stop_stage=${stop_stage:-5}
device=${device:-cpu}
chains=${chains:-64}
lqvae_steps=${lqvae_steps:-}
prior_steps=${prior_steps:-}
sources=${sources:-drums bass}
here=recipes/drums_bass

run_stage() { [ "$1" -ge "$stage" ] && [ "$1" -le "$stop_stage" ]; }

# Training soundfonts: the GM soundfonts Debian packages except the reserved MuseScore General
# family and TimGM6mb (the unseen-timbre check), as in recipes/piano_violin.
sf=/usr/share/sounds
fonts_real="$sf/sf2/FluidR3_GM.sf2 $sf/sf3/FluidR3Mono_GM.sf3 $sf/sf2/sf_GMbank.sf2 $sf/sf2/OPL-3_FM_128M.sf2"

# synth_once DIR ARGS...: `audiosep synth drums_bass -o DIR ARGS` unless DIR exists
synth_once() {
    local dir=$1; shift
    if [ -d "$dir" ]; then
        echo "stage 0: $dir exists (a synthesized set, or Slakh2100): not rendered again"
    else
        echo "stage 0: synthesize $dir (22.05 kHz, as the LQ-VAE)"
        $audiosep synth drums_bass -o "$dir" --duration 10 --sample-rate 22050 --seed 0 "$@"
    fi
}

if run_stage 0; then
    bash scripts/setup_system.sh soundfonts
    synth_once "$data" --train 120 --valid 20 --test 20
    # what real recordings vary in: kits and basses (a soundfont per source), levels (±8 dB
    # around equal loudness), tempo, tuning, dynamics, EQ, rooms
    # shellcheck disable=SC2086
    synth_once "$data_real" --train 400 --valid 40 --test 40 --excerpts-per-piece 2 \
        --soundfont $fonts_real --font-per-source --gain-db 8 --tempo 0.1 --detune-cents 30 \
        --velocity 20 --expression 0.4 --eq-db 6 --reverb 0.7
    # the valid and test excerpts of $data, rendered with a soundfont no model saw
    synth_once "$data_unseen" --train 0 --valid 20 --test 20 --soundfont "$sf/sf2/TimGM6mb.sf2"
fi

if run_stage 1; then
    echo "stage 1: train the LQ-VAE into $exp/lqvae.pt (resumes)"
    # shellcheck disable=SC2086
    $audiosep train lqvae --data "$train_data" --sources $sources --config "$here/lqvae.yaml" \
        ${lqvae_steps:+--steps "$lqvae_steps"} --threads 1 --device "$device" -o "$exp/lqvae.pt"
fi

if run_stage 2; then
    echo "stage 2: train one code prior per source into $exp/priors/ (resumes)"
    for source in $sources; do
        # shellcheck disable=SC2086
        $audiosep train transformer --lqvae "$exp/lqvae.pt" --data $prior_data --source "$source" \
            --config "$here/transformer.yaml" ${prior_steps:+--steps "$prior_steps"} --threads 1 \
            --device "$device" -o "$exp/priors/$source.pt"
    done
    # the supervised NMF baseline on the same stems, at the same rate (it does not resume: a model
    # already there is kept)
    # shellcheck disable=SC2086
    [ -f "$exp/nmf_drums_bass.pt" ] || $audiosep train nmf --data $prior_data --sources $sources \
        -o "$exp/nmf_drums_bass.pt" --atoms 64 --sample-rate 22050 --seed 0
fi

# The test sets: the FluidR3 excerpts and the same excerpts rendered with TimGM6mb (a timbre
# no model is trained on), as TAG:FOLDER; a missing one is skipped.
test_sets="fluidr3:$data unseen:$data_unseen"

if run_stage 3; then
    echo "stage 3: separate the test mixtures of $test_sets"
    priors=()
    for source in $sources; do priors+=("$exp/priors/$source.pt"); done
    for set in $test_sets; do
        tag=${set%%:*} dir=${set#*:}
        [ -d "$dir/test" ] || continue
        $audiosep separate "$dir/test" -o "$exp/$tag" -n latent --method latent --model "$exp/lqvae.pt" \
            "${priors[@]}" --chains "$chains" --device "$device" >/dev/null
        $audiosep separate "$dir/test" -o "$exp/$tag" -n nmf --model "$exp/nmf_drums_bass.pt" >/dev/null
    done
fi

if run_stage 4; then
    echo "stage 4: evaluate (BSSEval v4, 1 s windows), the oracles, the summary and the reports"
    for set in $test_sets; do
        tag=${set%%:*} dir=${set#*:}
        [ -d "$dir/test" ] || continue
        for system in latent nmf; do
            $audiosep evaluate "$dir/test" "$exp/$tag/$system" -o "$exp/$tag/$system/report" --method "$system"
        done
        for oracle in irm2 mix; do
            $audiosep oracle --method "$oracle" "$dir" -o "$exp/$tag/oracle_$oracle"
        done
    done
    report_test_sets "$exp" "$test_sets"
fi

# Honest folds (recipes/common.sh: render_folds): bass lines of composers no model here trains on
# (they train on Bach chorales) × each soundfont, at the LQ-VAE's rate, scored by the benchmark
# with the bundled drums_bass set's methods (latent, nmf) beside IRM2 and the mixture / 2.
folds=${folds:-data/drums_bass_folds}
if run_stage 5; then
    echo "stage 5: render the honest folds into $folds and score the bundled drums_bass set on them"
    render_folds drums_bass "$folds" --sample-rate 22050
    mkdir -p "$exp"
    # every model's training composers are checked: the LQ-VAE's ($train_data), the priors' and NMF's
    # shellcheck disable=SC2086
    .venv/bin/python benchmarks/separation.py --set drums_bass --folds "$folds"/*_* --train-data "$train_data" $prior_data \
        | tee "$exp/folds.txt"
fi
