"""The README's claims hold: its Python example runs (a doctest) and its model table shows the
bundled sets' measured scores and sizes (from their manifests, which the benchmark writes)."""
import doctest
import re
from pathlib import Path

import audiosep

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_the_python_example_runs_as_a_doctest(monkeypatch):
    monkeypatch.chdir(ROOT)  # its paths are relative to the repository root
    block = re.search(r"```python\n(.*?)```", README, re.S).group(1)
    test = doctest.DocTestParser().get_doctest(block, {}, "README.md", "README.md", 0)
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    runner.run(test)
    assert runner.tries >= 3 and runner.failures == 0


def _pair(scores: dict, method: str, sources) -> str:
    return " / ".join(f"{scores[method][source]:.2f}" for source in sources)


def test_the_model_table_shows_each_sets_manifest_scores_and_size():
    for name, bundled in audiosep.models().items():
        row = next(line for line in README.splitlines() if line.startswith(f"| `{name}` |"))
        sdr = bundled.scores["sdr"]
        assert f"{_pair(sdr, bundled.default, bundled.sources)} ({_pair(sdr, 'nmf', bundled.sources)})" in row, row
        assert f"{bundled.size_bytes() / 1e6:.1f} MB" in row and ", ".join(bundled.sources) in row
        assert f"| {bundled.scores['cpu_s_per_s'][bundled.default]:g} |" in row, row
