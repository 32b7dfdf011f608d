"""Testing tools shipped with fastconv: `python -m fastconv.testing.fuzz` (a differential fuzz
against float64 F.conv2d, and a hostile-input list run in crash-isolating subprocesses)."""
