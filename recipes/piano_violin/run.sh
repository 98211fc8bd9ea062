#!/usr/bin/env bash
# Piano/violin separation, end to end: synth → train → separate → evaluate → report.
#
#   recipes/piano_violin/run.sh                       # stages 0-5
#   stage=2 stop_stage=3 recipes/piano_violin/run.sh  # some stages
#   stage=5 recipes/piano_violin/run.sh               # only the honest folds
#   stage=6 stop_stage=6 recipes/piano_violin/run.sh  # go on with the long NCSN training
#
# Variables (environment): data (the FluidR3 dataset folder), data_real (the augmented
# multi-soundfont training set of Bach pieces), data_poly (the same augmentation on pieces of the
# trecento and Palestrina folders: more composers for the mask network), data_unseen (the test
# excerpts rendered with TimGM6mb, a
# soundfont no model is trained on), exp (outputs), stage, stop_stage, train_ncsn / train_glow
# (1 to train the NCSN / Glow priors too; then BASIS is separated and scored beside NMF with
# each: from the mixture, and started from the NMF stems), train_vae (1 to train VAE-BSS on the
# mixtures too; its stems are unnamed, source0/source1, so it is scored by
# benchmarks/vae_bss_audio.py, which names them per track), ncsn_long_steps (how far stage 6,
# the long NCSN training, goes this time), ncsn_steps,
# finetune_steps, device,
# folds (the honest test folds of stage 5: composers no model trained on × each soundfont).
# Run it after `make test` or `make demo` has set up .venv. The test split comes from held-out
# pieces; Haydn and Mozart are never used, nor the MuseScore General soundfonts (reserved for
# evaluation; `audiosep synth` refuses them). The bundled models are the `*_real` ones.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=recipes/common.sh
source recipes/common.sh
audiosep=.venv/bin/audiosep
data=${data:-data/piano_violin}
data_real=${data_real:-data/piano_violin_real}
data_unseen=${data_unseen:-data/piano_violin_timgm}
data_poly=${data_poly:-data/piano_violin_poly}
data_real_tr=${data_real_tr:-data/piano_violin_real_tr}  # the same pieces transposed (every register)
data_poly_tr=${data_poly_tr:-data/piano_violin_poly_tr}
data_misc=${data_misc:-data/piano_violin_misc}  # the corpus's other non-fold composers
folds=${folds:-data/piano_violin_folds}
exp=${exp:-exp/piano_violin}
stage=${stage:-0}
stop_stage=${stop_stage:-5}  # stage 6 (the long NCSN training) only when asked for
train_ncsn=${train_ncsn:-0}
train_glow=${train_glow:-0}
train_vae=${train_vae:-0}
# the total step both long NCSN priors are taken to this time, one after the other (default: train.steps
# of ncsn_long.yaml, 65 000); a CPU session raises it by what fits, e.g. 2000 more
ncsn_long_steps=${ncsn_long_steps:-}
ncsn_steps=${ncsn_steps:-40000}
finetune_steps=${finetune_steps:-}  # default: train.steps of ncsn_finetune.yaml
device=${device:-cpu}

run_stage() { [ "$1" -ge "$stage" ] && [ "$1" -le "$stop_stage" ]; }

# Training soundfonts: every GM soundfont Debian packages except the reserved MuseScore General
# family and TimGM6mb (the unseen-timbre check). fluid-soundfont-gs is left out: FluidR3_GS.sf2
# holds only the GS drum/variation banks, no piano or violin (its renders are silent).
sf=/usr/share/sounds
fonts_real="$sf/sf2/FluidR3_GM.sf2 $sf/sf3/FluidR3Mono_GM.sf3 $sf/sf2/sf_GMbank.sf2 $sf/sf2/OPL-3_FM_128M.sf2"
timgm="$sf/sf2/TimGM6mb.sf2"

if run_stage 0; then
    bash scripts/setup_system.sh soundfonts
    echo "stage 0: synthesize the datasets into $data, $data_real and $data_unseen"
    $audiosep synth piano_violin -o "$data" --train 180 --valid 20 --test 20 --duration 10 --seed 0
    # what real recordings vary in: timbre (a soundfont per source), levels (sources ±8 dB
    # around equal loudness: ±16 dB between them), tempo, tuning, dynamics, EQ, rooms
    # shellcheck disable=SC2086
    $audiosep synth piano_violin -o "$data_real" --train 400 --valid 40 --test 40 --excerpts-per-piece 2 \
        --duration 10 --seed 0 --soundfont $fonts_real --font-per-source --gain-db 8 --tempo 0.1 \
        --detune-cents 30 --velocity 20 --expression 0.4 --eq-db 6 --reverb 0.7
    # more composers for the mask network, none of them in the folds of stage 5
    # shellcheck disable=SC2086
    $audiosep synth piano_violin -o "$data_poly" --composers trecento palestrina --train 300 --valid 30 --test 0 \
        --excerpts-per-piece 2 --duration 10 --seed 1 --soundfont $fonts_real --font-per-source --gain-db 8 \
        --tempo 0.1 --detune-cents 30 --velocity 20 --expression 0.4 --eq-db 6 --reverb 0.7
    # transposed (--transpose 12) and timbre-shifted renders, and more composers, for the mask network
    tr="--transpose 12 --timbre-shift 2"
    # shellcheck disable=SC2086
    $audiosep synth piano_violin -o "$data_real_tr" --train 400 --valid 40 --test 0 --excerpts-per-piece 2 \
        --duration 10 --seed 2 --soundfont $fonts_real --font-per-source --gain-db 8 --tempo 0.1 \
        --detune-cents 30 --velocity 20 --expression 0.4 --eq-db 6 --reverb 0.7 $tr
    # shellcheck disable=SC2086
    $audiosep synth piano_violin -o "$data_poly_tr" --composers trecento palestrina --train 300 --valid 30 --test 0 \
        --excerpts-per-piece 2 --duration 10 --seed 3 --soundfont $fonts_real --font-per-source --gain-db 8 \
        --tempo 0.1 --detune-cents 30 --velocity 20 --expression 0.4 --eq-db 6 --reverb 0.7 $tr
    # shellcheck disable=SC2086
    $audiosep synth piano_violin -o "$data_misc" --composers schumann_robert schumann_clara beach corelli cpebach \
        handel johnson_j_r liliuokalani verdi webern schoenberg lusitano luca --splits 0.85 0.15 0 --train 200 \
        --valid 30 --test 0 --excerpts-per-piece 10 --duration 10 --seed 4 --soundfont $fonts_real \
        --font-per-source --gain-db 8 --tempo 0.1 --detune-cents 30 --velocity 20 --expression 0.4 --eq-db 6 \
        --reverb 0.7 $tr
    # the test (and valid, for tuning) excerpts of $data, rendered with a soundfont no model saw
    $audiosep synth piano_violin -o "$data_unseen" --train 0 --valid 20 --test 20 --duration 10 --seed 0 \
        --soundfont "$timgm"
fi

if run_stage 1; then
    echo "stage 1: train the models into $exp"
    # (an NMF training does not resume: a model already there is kept)
    [ -f "$exp/nmf_piano_violin.pt" ] || $audiosep train nmf --data "$data" -o "$exp/nmf_piano_violin.pt" --atoms 64 --seed 0
    # the bundled NMF model (audiosep/pretrained/nmf_piano_violin.pt): the same on the augmented set
    [ -f "$exp/nmf_piano_violin_real.pt" ] || $audiosep train nmf --data "$data_real" \
        -o "$exp/nmf_piano_violin_real.pt" --atoms 64 --seed 0
    # the bundled mask network (audiosep/pretrained/masknet_piano_violin.pt, the default separation
    # and the start of BASIS): both augmented sets, then its weights-only copy
    $audiosep train masknet --data "$data_real" "$data_poly" "$data_real_tr" "$data_poly_tr" "$data_misc" \
        --sources piano violin \
        --config recipes/piano_violin/masknet.yaml --threads 1 --device "$device" -o "$exp/masknet.pt"
    $audiosep export "$exp/masknet.pt" -o "$exp/masknet_piano_violin.pt" --overwrite
    # NCSN priors for BASIS: opt in with train_ncsn=1 (hours on a CPU; resumes where it stopped)
    if [ "$train_ncsn" = 1 ]; then
        for source in piano violin; do
            $audiosep train ncsn --data "$data" --source "$source" --preset default \
                --config recipes/piano_violin/ncsn.yaml --steps "$ncsn_steps" --threads 1 \
                --device "$device" -o "$exp/${source}_ncsn_v2.pt"
            # fine-tuned on the augmented set: the bundled priors (audiosep/pretrained/
            # ncsn_piano_violin/, made with ncsn_steps=5000, see its README)
            $audiosep train ncsn --data "$data_real" --source "$source" --preset default \
                --config recipes/piano_violin/ncsn_finetune.yaml ${finetune_steps:+--steps "$finetune_steps"} \
                --init-from "$exp/${source}_ncsn_v2.pt" --threads 1 --device "$device" \
                -o "$exp/${source}_ncsn_v2_real.pt"
            # the weights-only copy (EMA weights, no optimiser state) that is bundled
            $audiosep export "$exp/${source}_ncsn_v2_real.pt" -o "$exp/ncsn_piano_violin/$source.pt" --overwrite
        done
    fi
    # VAE-BSS on STFT-magnitude patches of the mixtures only (train_vae=1; about 20 min on one thread):
    # then `python benchmarks/vae_bss_audio.py --model "$exp/vae_bss.pt" --data "$data" "$data_unseen"`
    if [ "$train_vae" = 1 ]; then
        $audiosep train vae --data "$data" --config recipes/piano_violin/vae_bss.yaml --threads 1 \
            --device "$device" -o "$exp/vae_bss.pt"
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

# The test sets: the FluidR3 excerpts (training timbre of the first priors) and the same
# excerpts rendered with TimGM6mb (a timbre no model is trained on), as TAG:FOLDER.
test_sets="fluidr3:$data unseen:$data_unseen"

# separate_test DATA NAME ARGS...: `audiosep separate ARGS` on every test mixture of DATA
# (the split folder: each track's mix.wav) into $exp/NAME/<track>/
separate_test() {
    local data_dir=$1 name=$2; shift 2
    $audiosep separate "$data_dir/test" -o "$exp/$(dirname "$name")" -n "$(basename "$name")" \
        --device "$device" "$@" >/dev/null
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
    echo "stage 2: separate the test mixtures of $test_sets"
    for set in $test_sets; do
        tag=${set%%:*} dir=${set#*:}
        [ -d "$dir/test" ] || continue
        separate_test "$dir" "$tag/nmf" --model "$exp/nmf_piano_violin.pt"
        separate_test "$dir" "$tag/nmf_real" --model "$exp/nmf_piano_violin_real.pt"
        separate_test "$dir" "$tag/masknet" --model "$exp/masknet.pt"
        for kind in ncsn_v2 ncsn_v2_real glow_bundle glow_sigma; do
            if link_priors "$kind"; then
                # priors fine-tuned on the augmented set start from the NMF model of that set
                nmf_model="$exp/nmf_piano_violin.pt"
                [ "$kind" = ncsn_v2_real ] && nmf_model="$exp/nmf_piano_violin_real.pt"
                separate_test "$dir" "$tag/basis_$kind" --model "$exp/priors_$kind/piano.pt" \
                    "$exp/priors_$kind/violin.pt" --init mixture
                separate_test "$dir" "$tag/basis_${kind}_nmf" --model "$exp/priors_$kind/piano.pt" \
                    "$exp/priors_$kind/violin.pt" --init nmf --init-model "$nmf_model"
                # started from the mask network: `audiosep separate --method basis` with these priors
                separate_test "$dir" "$tag/basis_${kind}_masknet" --model "$exp/priors_$kind/piano.pt" \
                    "$exp/priors_$kind/violin.pt" --init model --init-model "$exp/masknet.pt"
            fi
        done
    done
fi

if run_stage 3; then
    echo "stage 3: evaluate (BSSEval v4, 1 s windows) and the oracles"
    for set in $test_sets; do
        tag=${set%%:*} dir=${set#*:}
        [ -d "$dir/test" ] || continue
        for system in nmf nmf_real masknet basis_{ncsn_v2,ncsn_v2_real,glow_bundle,glow_sigma}{,_nmf,_masknet}; do
            if [ -d "$exp/$tag/$system" ]; then
                $audiosep evaluate "$dir/test" "$exp/$tag/$system" -o "$exp/$tag/$system/report" --method "$system"
            fi
        done
        for oracle in irm2 mel-ideal mix; do
            $audiosep oracle --method "$oracle" "$dir" -o "$exp/$tag/oracle_$oracle"
        done
    done
fi

if run_stage 4; then
    echo "stage 4: summary table and listening reports"
    report_test_sets "$exp" "$test_sets"
fi

# Honest folds (recipes/common.sh: render_folds): composers none of whose pieces any model here
# trains on, × each soundfont.
if run_stage 5; then
    echo "stage 5: render the honest folds into $folds and score the bundled models on them"
    render_folds piano_violin "$folds"
    # the bundled models (trained on $data_real, the mask network also on $data_poly, $data_real_tr,
    # $data_poly_tr and $data_misc): the default
    # `audiosep separate` (the mask network), BASIS from it and from NMF, NMF, IRM2 and the mixture / 2
    # per fold, the mean and the worst fold (refused if a fold shares a composer with the training data)
    mkdir -p "$exp"
    .venv/bin/python benchmarks/separation.py --no-mixture-init --folds "$folds"/*_* \
        --train-data "$data_real" "$data_poly" "$data_real_tr" "$data_poly_tr" "$data_misc" | tee "$exp/folds.txt"
fi

# The long NCSN training (stage=6 stop_stage=6, after stage 0): the bundled priors trained on for
# 65 000 more steps of recipes/piano_violin/ncsn_long.yaml on the mask network's five sets, over
# ten times the samples they saw. The resumable checkpoints live in the repository
# (recipes/piano_violin/checkpoints/: float32 weights and EMA, bfloat16 moments), so a run that
# spans sessions or machines goes on from the committed state; ncsn_long_steps stops it earlier.
if run_stage 6; then
    echo "stage 6: the long NCSN training into recipes/piano_violin/checkpoints"
    for source in piano violin; do
        ckpt="recipes/piano_violin/checkpoints/${source}_ncsn_long.pt"
        if [ -n "$ncsn_long_steps" ] && [ "$(checkpoint_step "$ckpt")" -ge "$ncsn_long_steps" ]; then
            echo "$ckpt: at or past step $ncsn_long_steps already"
            continue
        fi
        $audiosep train ncsn --data "$data_real" "$data_poly" "$data_real_tr" "$data_poly_tr" "$data_misc" \
            --source "$source" --config recipes/piano_violin/ncsn_long.yaml \
            --init-from "audiosep/pretrained/ncsn_piano_violin/$source.pt" ${ncsn_long_steps:+--steps "$ncsn_long_steps"} \
            --threads 1 --device "$device" -o "$ckpt"
    done
fi
