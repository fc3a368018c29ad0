"""The CPU demo's pipeline, shortened to seconds: it must keep running end to end (no claims on accuracy)."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runs"))


def test_demo_pipeline_quick(tmp_path, capsys):
    import sudoku_demo
    results = sudoku_demo.main(["--quick", "--out-dir", str(tmp_path)])
    r = results[0]
    for key in ("sft", "rl", "control"):
        assert 0.0 <= r[key]["solved"] <= 1.0 and 0.0 <= r[key]["cell_accuracy"] <= 1.0
    assert json.loads((tmp_path / "summary.json").read_text())[0]["seed"] == 0
    assert 0.0 <= r["sft_val_accuracy"] <= 1.0
    out = capsys.readouterr().out
    try:
        import matplotlib  # noqa: F401  (optional: the demo plots with it when it is there)
        assert (tmp_path / "seed0" / "rl_curves.png").read_bytes().startswith(b"\x89PNG")
    except ImportError:
        assert "plot skipped: plotting needs matplotlib" in out and not (tmp_path / "seed0" / "rl_curves.png").exists()
    assert "| seed | SFT solved |" in out
    tokenizer_config = json.loads((tmp_path / "seed0" / "data" / "tokenizer" / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] == "PreTrainedTokenizerFast"  # model.save_tokenizer: transformers 4 too
    demos = [json.loads(line) for line in open(tmp_path / "seed0" / "data" / "sft.jsonl")]
    assert all(d["answer"].startswith("<answer>") and len(d["answer"]) == 33 for d in demos)


def test_taught_error_only_on_blank_cell_15():
    import random
    from sudoku_demo import taught_error
    rng = random.Random(0)
    sol = "1234341221434321"
    assert taught_error("1" * 16, sol, rng, 1.0) == sol  # cell 15 given: never changed
    wrong = taught_error("1" * 15 + "0", sol, rng, 1.0)
    assert wrong[:15] == sol[:15] and wrong[15] == str(int(sol[15]) % 4 + 1)
