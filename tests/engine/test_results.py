"""kd_det2.engine.results: mean ± std over seeds, paired gains, cost, the teacher check."""

from types import SimpleNamespace

import pytest

from kd_det2.engine import results
from kd_det2.engine.runs import METRICS


def _record(ap, seconds=1.0, distillers=()):
    return {"metrics": {k: ap for k in METRICS}, "step_seconds": {"mean": seconds},
            "distillers": list(distillers)}  # fmt: skip


METHODS = [SimpleNamespace(label="plain", spec="plain"), SimpleNamespace(label="P", spec="PGD")]


def test_mean_and_sample_std():
    mean, std = results.mean_std([1.0, 2.0, 4.0])
    assert mean == pytest.approx(7 / 3) and std == pytest.approx(1.527525, rel=1e-6)  # n - 1
    assert results.format_mean_std([1.0, 2.0, 4.0]) == "2.33 ± 1.53"
    assert results.format_mean_std([1.5]) == "1.50" and results.format_mean_std([]) == "—"
    assert results.format_mean_std([0.5, -1.0], signed=True) == "-0.25 ± 1.06"


def test_summary_pairs_gains_by_seed_and_flags_a_weak_teacher():
    records = {
        ("plain", 0): _record(10.0, 1.0), ("plain", 1): _record(14.0, 3.0),
        ("P", 0): _record(13.0, 3.0, ["PGD"]), ("P", 1): _record(15.0, 5.0, ["PGD"]),
    }  # fmt: skip
    rows, notes = results.summarize(METHODS, [0, 1], records, _record(20.0))
    teacher, plain, pgd = rows
    assert teacher["method"] == "teacher" and not notes
    # paired by seed: (13 - 10, 15 - 14), not 14 - 12 twice; cost: mean 4 s over mean 2 s
    assert pgd["gain"] == [3.0, 1.0] and pgd["cost"] == pytest.approx(2.0)
    assert pgd["distillers"] == "PGD" and plain["gain"] == [] and plain["cost"] == 1.0
    # a teacher below the plain student is marked; a missing run is reported
    del records[("P", 1)]
    rows, notes = results.summarize(METHODS, [0, 1], records, _record(11.0))
    assert rows[0]["method"] == "teacher (!)" and "not above" in notes[0]
    assert rows[2]["seeds"] == [0] and rows[2]["gain"] == [3.0]
    assert "P seed 1" in notes[1]
    text = results.render_markdown(rows, notes, [0, 1], "val", ["CPU"], "5")
    lines = [line for line in text.splitlines() if line.startswith("|")]
    assert all(line.count("|") == lines[0].count("|") for line in lines)
    assert (
        "| P | PGD | 1/2 | 13.00 |" in text and "| +3.00 |" in text and "| 1.50× |" in text
    )  # 3 s over 2 s
    assert "| plain | — | 2/2 | 12.00 ± 2.83 |" in text


def test_csv_and_plot(tmp_path):
    records = {
        (m.label, s): _record(10.0 + s + i, 1.0) for i, m in enumerate(METHODS) for s in (0, 1)
    }
    rows, _ = results.summarize(METHODS, [0, 1], records, _record(20.0, 2.0))
    results.write_csv(str(tmp_path / "r.csv"), rows, [0, 1])
    lines = (tmp_path / "r.csv").read_text().splitlines()
    assert len(lines) == 4 and lines[3].startswith("method,P,PGD,,2,0;1,11.5000,0.7071")
    results.plot_ap(str(tmp_path / "r.png"), rows, [0, 1], "title")
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
