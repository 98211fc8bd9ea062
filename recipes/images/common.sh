# Shared by the image recipes (sourced from the repository root after setting `recipe`):
# the tools, the dataset choice, the output folder and the stage runner.
#   dataset   digits (scikit-learn's 8x8 digits, no download: minutes) | mnist
#   mnist     the folder of the four MNIST IDX files (needed with dataset=mnist)
#   exp       outputs (default exp/images/<recipe>_<dataset>)
#   device, stage, stop_stage
# Sets: audiosep, python, images (the dataset spec), here (the recipe's folder), exp, run_stage.
audiosep=.venv/bin/audiosep
python=.venv/bin/python
dataset=${dataset:-digits}
mnist=${mnist:-}
device=${device:-cpu}
stage=${stage:-1}
stop_stage=${stop_stage:-2}
case $dataset in
    digits) images=digits ;;
    mnist) [ -n "$mnist" ] || { echo "dataset=mnist needs mnist=DIR (the folder of the four MNIST IDX files)" >&2; exit 2; }
           images="mnist:$mnist" ;;
    *) echo "dataset must be digits or mnist, got $dataset" >&2; exit 2 ;;
esac
run_stage() { [ "$1" -ge "$stage" ] && [ "$1" -le "$stop_stage" ]; }
here=recipes/images/$recipe
exp=${exp:-exp/images/${recipe}_$dataset}
mkdir -p "$exp"
