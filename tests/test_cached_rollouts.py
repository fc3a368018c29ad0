"""runs/cached_rollouts.py: the study's code path in seconds (--quick: an untrained model, no claims) and its
verdict rule."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runs"))


def test_study_quick(tmp_path, capsys):
    import cached_rollouts
    results = cached_rollouts.main(["--quick", "--seeds", "0", "--out-dir", str(tmp_path)])
    by = {r["mode"]: r for r in results}
    assert list(by) == list(cached_rollouts.MODES)
    for r in results:
        assert 0.0 <= r["test"]["solved"] <= 1.0 and r["rounds"] == 1 and len(r["rewards"]) == 1
    # 12 sampler calls per round (3 blocks x 4) except with threshold; the caches run fewer positions, the
    # middle ground between dual and exact
    assert all(by[m]["gen_calls"] == 12 for m in ("exact", "prefix", "dual", "dual+refresh2"))
    pos = {m: r["gen_positions"] for m, r in by.items()}
    assert pos["dual"] < pos["dual+refresh2"] < pos["exact"] and pos["dual"] < pos["prefix"] < pos["exact"]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert len(saved["runs"]) == 5 and set(saved["verdict"]) == set(cached_rollouts.MODES)
    md = (tmp_path / "cached_rollouts.md").read_text()
    assert md.startswith("| rollouts (block 8) |") and all(f"| {m} |" in md for m in cached_rollouts.MODES)
    assert "| rollouts (block 8) |" in capsys.readouterr().out
    try:
        import matplotlib  # noqa: F401
        assert (tmp_path / "cached_rollouts.png").read_bytes().startswith(b"\x89PNG")
    except ImportError:
        assert not (tmp_path / "cached_rollouts.png").exists()


def test_verdict_rule():
    """noise = max(sd of exact's per-seed gains, binomial SE of its solved rate); keep = mean >= exact - 2 noise."""
    from cached_rollouts import verdict
    sft = {0: 0.5, 1: 0.5, 2: 0.5}
    solved = {"exact": [0.99, 1.0, 0.98], "good": [0.985, 0.975, 0.985], "bad": [0.95, 0.96, 0.95]}
    results = [{"mode": m, "seed": s, "test": {"solved": v[s], "items": 512}} for m, v in solved.items()
               for s in range(3)]
    v = verdict(results, sft)
    assert abs(v["exact"]["noise"] - 1.0) < 1e-9  # sd of 49, 50, 48 points = 1 > SE 100 sqrt(.99 * .01 / 512)
    assert abs(v["exact"]["floor"] - 47.0) < 1e-9
    assert v["exact"]["keeps"] and v["good"]["keeps"] and not v["bad"]["keeps"]
    assert all(abs(v["bad"]["gains"][s] - g) < 1e-9 for s, g in enumerate([45.0, 46.0, 45.0]))
