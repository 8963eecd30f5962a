"""benchmarks/results_file.py: each benchmark rewrites only its own section of RESULTS.md."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_results_file():
    spec = importlib.util.spec_from_file_location("results_file", ROOT / "benchmarks" / "results_file.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_write_section_keeps_the_other_sections_in_their_order(tmp_path):
    results = load_results_file()
    path = tmp_path / "RESULTS.md"
    results.write_section("train_step", "## steps\nold figures", path)
    results.write_section("modelnet40_methods", "## methods\n| a | b |", path)
    results.write_section("custom", "## mine", path)
    results.write_section("train_step", "## steps\nnew figures\n", path)
    text = path.read_text()
    assert text.startswith(results.TITLE)
    assert "old figures" not in text and text.count("new figures") == 1 and "| a | b |" in text
    order = [text.index(f"<!-- begin {name} -->") for name in ("modelnet40_methods", "train_step", "custom")]
    assert order == sorted(order)
    assert text.count("<!-- end train_step -->") == 1


def test_the_repository_results_file_has_every_section_once():
    text = (ROOT / "benchmarks" / "RESULTS.md").read_text()
    for name in load_results_file().ORDER:
        assert text.count(f"<!-- begin {name} -->") == 1 and text.count(f"<!-- end {name} -->") == 1, name
