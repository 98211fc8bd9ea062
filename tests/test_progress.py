"""Progress bars off a terminal: whole lines, no control characters, a bounded rate."""
from audiosep.progress import progress_bar


def test_a_bar_off_a_terminal_writes_plain_lines_first_and_last_state_included(capsys):
    bar = progress_bar(total=5.0, desc="separate", unit="s", mininterval=0.0)
    for _ in range(5):
        bar.update(1.0)
    bar.close()
    nested = progress_bar(range(3), desc="inner", leave=False, position=1, mininterval=0.0)
    list(nested)
    err = capsys.readouterr().err
    assert "\r" not in err and "\x1b" not in err
    lines = err.splitlines()
    assert lines[0].startswith("separate:   0%") and lines[-1].startswith("inner: 100%")
    assert any(line.startswith("separate: 100%") for line in lines)
    assert all(line.strip() for line in lines)


def test_off_a_terminal_a_bar_writes_at_most_one_line_per_interval(capsys):
    bar = progress_bar(total=1000, desc="steps")  # the default interval: seconds, far above this loop
    for _ in range(1000):
        bar.update(1)
    bar.close()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) <= 3 and lines[-1].startswith("steps: 100%")
