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
