# Shared by the image recipes (sourced from the repository root): the tools, the dataset
# choice and the stage runner.
#   dataset   digits (scikit-learn's 8x8 digits, no download: minutes) | mnist
#   mnist     the folder of the four MNIST IDX files (default ../shared/data/mnist)
#   device, stage, stop_stage
# Sets: audiosep, python, images (the dataset spec), run_stage.
audiosep=.venv/bin/audiosep
python=.venv/bin/python
dataset=${dataset:-digits}
mnist=${mnist:-../shared/data/mnist}
device=${device:-cpu}
stage=${stage:-1}
stop_stage=${stop_stage:-2}
case $dataset in
    digits) images=digits ;;
    mnist) images="mnist:$mnist" ;;
    *) echo "dataset must be digits or mnist, got $dataset" >&2; exit 2 ;;
esac
run_stage() { [ "$1" -ge "$stage" ] && [ "$1" -le "$stop_stage" ]; }
