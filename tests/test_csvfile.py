"""app/csvfile.py: every export's CSV cells stay text in a spreadsheet, and the file lands whole."""

import csv

from app.csvfile import FORMULA_STARTS, cell, write


def test_cells_that_start_like_formulas_are_text():
    for start in FORMULA_STARTS:
        v = f"{start}1+1"
        assert cell(v) == "'" + v
    assert cell("cats") == "cats"
    assert cell("a=b") == "a=b"  # only the first character makes a formula
    assert cell(-0.5) == -0.5 and cell(3) == 3  # numbers stay numbers


def test_write_reads_back_with_every_formula_neutralised(tmp_path):
    path = tmp_path / "out.csv"
    rows = [{"name": "=HYPERLINK(\"https://site.example\")", "n": 1},
            {"name": "@SUM(A1)", "n": 2}, {"name": "plain", "n": 3}]
    assert write(path, ["name", "n"], rows) == 3
    got = list(csv.DictReader(path.open(encoding="utf-8")))
    assert [r["name"] for r in got] == ["'=HYPERLINK(\"https://site.example\")", "'@SUM(A1)", "plain"]
    assert [r["n"] for r in got] == ["1", "2", "3"]
    assert not list(tmp_path.glob("*.tmp*"))
