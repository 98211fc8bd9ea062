# Shell helpers shared by the recipes: `source recipes/common.sh` from recipes/<task>/run.sh
# (run from the repository root, after .venv is set up).

# report_test_sets EXP "TAG:DIR ...": print the summary table of every test set under EXP (the
# BSSEval medians of its evaluated systems and oracles), then write each test set's listening
# report (players, mel pictures and scores of every system) to EXP/TAG/report.html.
report_test_sets() {
    local exp=$1 test_sets=$2 set tag
    .venv/bin/python -c 'import sys; from audiosep.eval.report import test_set_summaries
for name, table in test_set_summaries(sys.argv[1]).items():
    print(f"\n{name} test set\n{table.round(2).to_string()}")' "$exp"
    for set in $test_sets; do
        tag=${set%%:*}
        if [ -d "$exp/$tag" ]; then
            .venv/bin/audiosep report "$exp/$tag" -o "$exp/$tag/report.html"
        fi
    done
}

# checkpoint_step CKPT: the optimiser steps a training checkpoint holds (0 when there is none yet),
# so a recipe can leave a model that already reached its share of a long run and go on to the next.
checkpoint_step() {
    [ -f "$1" ] || { echo 0; return; }
    .venv/bin/python -c 'import sys; from audiosep.priors.base import load_checkpoint
print(load_checkpoint(sys.argv[1])["step"])' "$1"
}

# Honest folds: groups of composers none of whose pieces any bundled model trains on (the priors,
# NMF and the LQ-VAE train on Bach chorales; the piano/violin mask network also on the composers
# of recipes/piano_violin's $data_poly and $data_misc), each rendered with every training
# soundfont in turn and with TimGM6mb (a timbre no model saw). Haydn and Mozart stay out (synth
# refuses them); so do the MuseScore General soundfonts.
fold_sf=/usr/share/sounds
fold_groups="beethoven:beethoven monteverdi:monteverdi romantic:schubert,chopin,joplin,weber"
fold_fonts="fluidr3:$fold_sf/sf2/FluidR3_GM.sf2 fluidr3mono:$fold_sf/sf3/FluidR3Mono_GM.sf3
    gmbank:$fold_sf/sf2/sf_GMbank.sf2 opl3:$fold_sf/sf2/OPL-3_FM_128M.sf2 timgm:$fold_sf/sf2/TimGM6mb.sf2"

# render_folds PRESET DIR [SYNTH ARGS...]: each fold of `fold_groups` × `fold_fonts` into
# DIR/<group>_<font>/test: 4 excerpts of 10 s, one per piece, every usable piece of the group in
# the test split whatever its hash split, one soundfont for every source, at equal loudness and
# without augmentation. A fold with an index.json is kept (delete the folder to render it again).
render_folds() {
    local preset=$1 folds=$2 group font dir
    shift 2
    bash scripts/setup_system.sh soundfonts
    for group in $fold_groups; do
        for font in $fold_fonts; do
            dir="$folds/${group%%:*}_${font%%:*}"
            # shellcheck disable=SC2046
            [ -f "$dir/index.json" ] || .venv/bin/audiosep synth "$preset" -o "$dir" --test 4 \
                --excerpts-per-piece 1 --duration 10 --seed 0 --soundfont "${font#*:}" --splits 0 0 1 \
                --composers $(tr , ' ' <<< "${group#*:}") "$@"
        done
    done
}
