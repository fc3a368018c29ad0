"""The command lines as a newcomer meets them (issue 18): every flag checked right after parsing (one line naming
the flag, the value and the rule, exit status 2), --help complete with each default shown once, the README's
commands valid, run folders claimed (refused when used, locked, cleaned, --overwrite), one-line errors for the
known failures (exit status 1) with tracebacks kept for the rest, optional wandb/TensorBoard logging."""
import argparse
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import bench
import data
import diffu_grpo
import eval as ev
import cli
import model
import plot
import sample
import sft
from cli import run_cli
from train_utils import claim_out_dir

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "runs"))
import cached_rollouts  # noqa: E402
import estimator_study  # noqa: E402
import sudoku_demo  # noqa: E402


def refused(fn, argv, capsys) -> str:
    """The one-line parser error of fn(argv) (exit status 2)."""
    with pytest.raises(SystemExit) as e:
        fn(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err  # one line, not argparse's usage block
    return err


# ----------------------------------------------------------------------------- arguments


@pytest.mark.parametrize("fn,argv,says", [
    (diffu_grpo.parse_args, ["--max-steps", "-1"], "argument --max-steps: must be >= 0, got -1"),
    (diffu_grpo.parse_args, ["--max-prompt-length", "0"], "argument --max-prompt-length: must be >= 1, got 0"),
    (diffu_grpo.parse_args, ["--lr", "-0.5"], "argument --lr: must be >= 0.0, got -0.5"),
    (diffu_grpo.parse_args, ["--lr", "nan"], "argument --lr: must be >= 0.0, got nan"),
    (diffu_grpo.parse_args, ["--mu", "0"], "argument --mu: must be >= 1, got 0"),
    (diffu_grpo.parse_args, ["--num-generations", "1"], "argument --num-generations: must be >= 2, got 1"),
    (diffu_grpo.parse_args, ["--p-mask-prompt", "1.5"], "argument --p-mask-prompt: must be >= 0.0 and <= 1.0"),
    (diffu_grpo.parse_args, ["--gen-length", "100"], "--gen-length 100: must be a multiple of --block-length 32"),
    (diffu_grpo.parse_args, ["--diffusion-steps", "12"], "--diffusion-steps 12: must be a multiple of the 8 blocks"),
    (diffu_grpo.parse_args, ["--micro-batch-size", "5"], "--micro-batch-size 5: must divide the 96 completions"),
    (diffu_grpo.parse_args, ["--task", "gsm8k,chess"], "--task gsm8k,chess: unknown chess"),
    (diffu_grpo.parse_args, ["--betas", "0.9"], "--betas 0.9: expected two numbers in [0, 1)"),
    (diffu_grpo.parse_args, ["--dry-run", "0"], "argument --dry-run: must be >= 1, got 0"),
    (diffu_grpo.parse_args, ["--init", "out/no/such/sft"], "--init out/no/such/sft: no such folder"),
    (diffu_grpo.parse_args, ["--countdown-test-path", "x.jsonl"], "used only with --task countdown"),
    (diffu_grpo.parse_args, ["--resume", "auto", "--overwrite"], "pass one of them"),
    (diffu_grpo.parse_args, ["--cache-refresh", "0", "--cache", "dual"], "argument --cache-refresh: must be >= 1"),
    (diffu_grpo.parse_args, ["--cache-refresh", "2"], "--cache-refresh 2: refreshes the rollout cache, pass --cache"),
    (sft.parse_args, ["--epochs", "0"], "argument --epochs: must be >= 1, got 0"),
    (sft.parse_args, ["--batch-size", "-2"], "argument --batch-size: must be >= 1, got -2"),
    (sft.parse_args, ["--val-frac", "1"], "argument --val-frac: must be >= 0.0 and < 1.0, got 1"),
    (sft.parse_args, ["--max-steps", "ten"], "argument --max-steps: expected an integer, got 'ten'"),
    (sft.parse_args, ["--data", "no_such.jsonl"], "--data no_such.jsonl: no such file or folder"),
    (sft.parse_args, ["--lora-targets", "q_proj,qq"], "--lora-targets q_proj,qq: unknown qq"),
    (sft.parse_args, ["--resume", "out/no/such/step-000100"], "--resume out/no/such/step-000100: no such file"),
    (sample.main, ["--prompt", "x", "--steps", "0"], "argument --steps: must be >= 1, got 0"),
    (sample.main, ["--prompt", "x", "--gen-length", "48"], "--gen-length 48: must be a multiple of --block-length 32"),
    (sample.main, ["--prompt", "x", "--gen-length", "64", "--steps", "3"], "--steps 3: must be a positive multiple"),
    (sample.main, ["--prompt", "x", "--cache-refresh", "1"], "--cache-refresh 1: refreshes a cache, pass --cache"),
    (ev.main, ["--steps", "0"], "argument --steps: must be >= 1, got 0"),
    (ev.main, ["--limit", "0"], "argument --limit: must be >= 1, got 0"),
    (ev.main, ["--gen-length", "24", "--block-length", "8", "--steps", "4"], "--steps 4: the 4 denoising steps"),
    (ev.main, ["--task", "sudoku", "--data-path", "a.csv,b.csv"], "one path per --task (1)"),
    (ev.main, ["--gen-length", "128,x"], "--gen-length 128,x: expected comma-separated positive integers"),
    (bench.parse_args, ["sampler", "--repeats", "0"], "argument --repeats: must be >= 1, got 0"),
    (bench.parse_args, ["grpo-step", "--gen-length", "30"], "--gen-length 30 must be a multiple of --block-length 16"),
    (sudoku_demo.main, ["--seeds", "0,x"], "argument --seeds: each seed expected an integer, got 'x'"),
    (sudoku_demo.main, ["--error-rate", "2"], "argument --error-rate: must be >= 0.0 and <= 1.0, got 2"),
    (cached_rollouts.main, ["--modes", "dual,prefix"], "--modes dual,prefix: modes from exact, prefix"),
    (cached_rollouts.main, ["--modes", "exact,full"], "exact among them (the baseline)"),
    (cached_rollouts.main, ["--seeds", "-1"], "argument --seeds: each seed must be >= 0, got -1"),
    (estimator_study.main, ["--seeds", "1,,2"], "argument --seeds: each seed expected an integer, got ''"),
    (cached_rollouts.main, ["--demo-dir", "out/no/such/demo"], "--demo-dir out/no/such/demo: no such"),
])
def test_bad_arguments_are_one_line_errors(fn, argv, says, capsys):
    assert says in refused(fn, argv, capsys)


def test_zero_means_zero_and_none_means_unset(capsys):
    args = diffu_grpo.parse_args(["--task", "sudoku", "--max-steps", "0"])
    diffu_grpo.resolve_defaults(args)
    assert args.max_steps == 0 and args.warmup_steps == 0  # 0 steps, not d1's 3,800
    args = diffu_grpo.parse_args(["--task", "sudoku"])
    diffu_grpo.resolve_defaults(args)
    assert args.max_steps == 3800 and args.mu == 8 and args.max_prompt_length == 200 and args.warmup_steps == 1
    assert sft.parse_args(["--max-steps", "0"]).max_steps == 0 and sft.parse_args([]).max_steps is None


def test_lr_zero_warns_and_still_runs(capsys):
    assert diffu_grpo.parse_args(["--lr", "0"]).lr == 0.0
    assert "warning: --lr 0: the policy never moves" in capsys.readouterr().err
    assert sft.parse_args(["--lr", "0"]).lr == 0.0
    assert "warning: --lr 0" in capsys.readouterr().err
    diffu_grpo.parse_args([])
    assert capsys.readouterr().err == ""


def test_world_size_rules_use_the_launch(monkeypatch, capsys):
    """Under torchrun WORLD_SIZE is known before the process group exists; --dry-run WORLD overrides it."""
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert "--prompts-per-step 16: must be divisible by the 3 processes" in refused(diffu_grpo.parse_args, [], capsys)
    assert diffu_grpo.parse_args(["--prompts-per-step", "12", "--micro-batch-size", "4"]).prompts_per_step == 12
    assert "must divide the 24 completions per process" in refused(
        diffu_grpo.parse_args, ["--prompts-per-step", "12", "--micro-batch-size", "5"], capsys)
    assert diffu_grpo.parse_args(["--dry-run", "8"]).dry_run == 8  # 16 prompts over 8: fine


def test_device_auto_and_a_missing_gpu(capsys):
    args = sft.parse_args([])
    assert (args.device, args.dtype) == (("cuda", "bfloat16") if torch.cuda.is_available() else ("cpu", "float32"))
    if not torch.cuda.is_available():
        assert "--device cuda: torch" in refused(sft.parse_args, ["--device", "cuda"], capsys)
        assert "sees no CUDA GPU" in refused(bench.parse_args, ["sampler", "--preset", "llada-8b"], capsys)
    assert "--device tpu9: not a device" in refused(diffu_grpo.parse_args, ["--device", "tpu9"], capsys)


def test_nothing_loads_before_the_checks(tmp_path, monkeypatch, capsys):
    """A bad gen length / an out-dir that is a file is refused before the model, the data or args.json."""
    monkeypatch.setattr(diffu_grpo, "build_model", lambda *a, **k: pytest.fail("loaded the model"))
    monkeypatch.setattr(sft, "load_examples", lambda *a, **k: pytest.fail("loaded the data"))
    refused(diffu_grpo.main, ["--init", "tiny", "--gen-length", "20", "--out-dir", str(tmp_path / "o")], capsys)
    assert not (tmp_path / "o").exists()
    (tmp_path / "file").write_text("x")
    for fn, flag in [(diffu_grpo.main, "--out-dir"), (sft.main, "--out-dir"), (ev.main, "--out-dir")]:
        err = refused(fn, [flag, str(tmp_path / "file" / "sub")], capsys)
        assert f"{tmp_path / 'file'} is a file, not a folder" in err


def parser_of(main, argv, monkeypatch) -> argparse.ArgumentParser:
    """The parser a script's main builds (captured at parse_args, before anything runs)."""
    class Got(Exception):
        pass

    def grab(self, args=None, namespace=None):
        raise Got(self)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", grab)
    with pytest.raises(Got) as e:
        main(argv)
    monkeypatch.undo()
    return e.value.args[0]


def all_parsers(monkeypatch) -> dict[str, argparse.ArgumentParser]:
    out = {"sft.py": sft.build_parser(), "diffu_grpo.py": diffu_grpo.build_parser()}
    for name, main in [("eval.py", ev.main), ("sample.py", sample.main), ("plot.py", plot.main),
                       ("runs/sudoku_demo.py", sudoku_demo.main), ("runs/cached_rollouts.py", cached_rollouts.main),
                       ("bench.py", bench.parse_args)]:
        out[name] = parser_of(main, [], monkeypatch)
    sub = next(a for a in out["bench.py"]._actions if isinstance(a, argparse._SubParsersAction))
    out.update({f"bench.py {k}": v for k, v in sub.choices.items()})
    return out


def test_help_explains_every_flag_and_shows_each_default_once(monkeypatch):
    """README: "--help explains every flag". Each default appears at most once in its flag's help."""
    monkeypatch.setenv("COLUMNS", "200")
    for name, p in all_parsers(monkeypatch).items():
        for action in p._actions:
            if action.option_strings and action.help != argparse.SUPPRESS:
                assert action.help and action.help.strip(), f"{name} {action.option_strings[0]} has no help"
        for chunk in re.split(r"\n(?=  -)", p.format_help()):
            assert chunk.count("(default") <= 1, f"{name}: {chunk}"
        assert "tasks.md" not in p.format_help()  # a file this repository does not have


def test_readme_commands_parse(monkeypatch):
    """Every `python X.py ...` / `torchrun ... X.py ...` line of the README's code blocks uses flags and values
    its script accepts (parsed only: the paths it names are made by earlier commands)."""
    parsers = all_parsers(monkeypatch)
    readme = (ROOT / "README.md").read_text()
    commands = 0
    for block in re.findall(r"```bash\n(.*?)```", readme, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line.split(" #")[0], comments=True)
            script = next((w for w in words if w.endswith(".py")), None)
            if not words or words[0] not in ("python", "torchrun") or script is None:
                continue
            argv = words[words.index(script) + 1:]
            name = "runs/sudoku_demo.py" if script.endswith("sudoku_demo.py") else script
            parsers[name].parse_args(argv)  # SystemExit (a failed test) on an unknown flag or a bad value
            commands += 1
    assert commands >= 20


# ----------------------------------------------------------------------------- run folders


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_claim_locks_refuses_and_cleans(tmp_path, capsys):
    out = tmp_path / "run"
    with claim_out_dir(out):
        lock = json.loads((out / "run.lock").read_text())
        assert lock["pid"] == os.getpid() and lock["host"] == socket.gethostname()
        with pytest.raises(FileExistsError, match=f"in use by another run \\(pid {os.getpid()} on"):
            with claim_out_dir(out, resume=True):
                pass
        (out / "metrics.jsonl").write_text("")
    assert not (out / "run.lock").exists()
    with pytest.raises(FileExistsError, match="already holds a run \\(metrics.jsonl\\): pass --resume auto"):
        with claim_out_dir(out):
            pass
    with claim_out_dir(out, resume=True):  # continuing the run in it is fine
        pass

    # A dead run's lock is taken over with a message; its temporary checkpoint folders are deleted, a live
    # process's are left alone.
    pid = dead_pid()
    (out / "run.lock").write_text(json.dumps({"pid": pid, "host": socket.gethostname()}))
    for name in (f"step-000004.tmp{pid}", f"merged.old{pid}", f"step-000008.tmp{os.getppid()}"):
        (out / name).mkdir()
        (out / name / "model.safetensors").write_bytes(b"x")
    with claim_out_dir(out, resume=True):
        pass
    said = capsys.readouterr().out
    assert f"taking over the lock of pid {pid} (no longer running)" in said
    assert sorted(p.name for p in out.iterdir()) == ["metrics.jsonl", f"step-000008.tmp{os.getppid()}"]
    assert f"process {os.getppid()} is still running" in said

    # Another host's lock cannot be checked from here: refused, with what to do.
    (out / "run.lock").write_text(json.dumps({"pid": 1, "host": "elsewhere"}))
    with pytest.raises(FileExistsError, match="on host elsewhere, which this host .* cannot check: if that run has "
                                              "ended, delete"):
        with claim_out_dir(out, resume=True):
            pass


def test_overwrite_deletes_only_a_runs_files(tmp_path, capsys):
    out = tmp_path / "run"
    (out / "step-000002").mkdir(parents=True)
    (out / "metrics.jsonl").write_text("{}\n")
    (out / "init-merged").mkdir()
    with claim_out_dir(out, overwrite=True):
        assert [p.name for p in out.iterdir()] == ["run.lock"]
    assert "--overwrite: deleted the earlier run" in capsys.readouterr().out
    (out / "metrics.jsonl").write_text("{}\n")
    (out / "my_notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="deletes only a run's own files, and .* also holds my_notes.txt"):
        with claim_out_dir(out, overwrite=True):
            pass
    assert (out / "my_notes.txt").exists() and (out / "metrics.jsonl").exists()


def sft_args(data_file, out, *extra):
    return ["--init-from-scratch", "tiny", "--data", str(data_file), "--out-dir", str(out), "--lora-r", "0",
            "--lr", "1e-3", "--epochs", "1", "--batch-size", "8", "--grad-accum", "1", "--eval-every", "0",
            "--save-every", "1", "--keep-last", "0", "--device", "cpu", *extra]


def test_rerun_into_a_used_out_dir(sort_jsonl, tmp_path, capsys):
    """Without --resume/--overwrite a used out-dir is refused (nothing loads); --overwrite leaves nothing of the
    old run, so a later --resume auto continues the NEW run, not the old run's later checkpoints."""
    out = tmp_path / "sft"
    sft.main(sft_args(sort_jsonl, out, "--max-steps", "3"))
    assert [p.name for p in sorted(out.glob("step-*"))] == ["step-000001", "step-000002", "step-000003"]
    with pytest.raises(FileExistsError, match="already holds a run"):
        sft.main(sft_args(sort_jsonl, out, "--max-steps", "1"))
    sft.main(sft_args(sort_jsonl, out, "--max-steps", "1", "--overwrite"))
    assert [p.name for p in out.glob("step-*")] == ["step-000001"]
    assert [json.loads(line)["step"] for line in open(out / "metrics.jsonl")] == [1]
    capsys.readouterr()
    sft.main(sft_args(sort_jsonl, out, "--max-steps", "1", "--resume", "auto"))
    assert "resumed from" in capsys.readouterr().out and "step-000001" in str(sorted(out.glob("step-*"))[-1])


def test_only_rank_0_claims_the_out_dir(tmp_path, monkeypatch):
    """Under torchrun (RANK set before the process group exists) ranks other than 0 leave --out-dir to rank 0."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text("{}\n")  # rank 0 would refuse this folder; rank 1 does not look
    ran = []
    monkeypatch.setattr(sft, "run", lambda args: ran.append(not (out / "run.lock").exists()))
    monkeypatch.setenv("RANK", "1")
    sft.main(["--out-dir", str(out), "--data", "s1k"])
    assert ran == [True]


def test_max_grad_norm_zero_means_no_clipping(tmp_path, monkeypatch):
    """As in sft.py (--grad-clip 0) and HF trainers: 0 turns clipping off (clip_grad_norm_ to 0 would zero the
    gradients and the run would silently not learn)."""
    csv = data.write_sudoku_csv(tmp_path / "s.csv", data.generate_sudoku(8, blanks=(4, 6), seed=0))
    norms = []
    clip = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda params, max_norm: norms.append(max_norm) or
                        clip(params, max_norm))
    diffu_grpo.main(["--init", "tiny", "--task", "sudoku", "--train-path", str(csv), "--style", "compact",
                     "--gen-length", "8", "--block-length", "8", "--diffusion-steps", "4", "--prompts-per-step", "2",
                     "--num-generations", "2", "--micro-batch-size", "4", "--lora-r", "2", "--eval-every", "0",
                     "--max-steps", "1", "--mu", "1", "--max-grad-norm", "0", "--out-dir", str(tmp_path / "rl")])
    assert norms == [float("inf")]


def test_init_merged_records_its_adapter(tiny_dir, tmp_path):
    """diffu_grpo's OUT/init-merged is reused by a resumed run only when it was merged from the same --init."""
    from model import LLaDA, apply_lora, save_adapter
    adapters = []
    for seed in (0, 1):
        m = apply_lora(LLaDA.from_pretrained(tiny_dir), r=2, alpha=4, seed=seed)
        with torch.no_grad():
            for n, q in m.named_parameters():
                if "lora_B" in n:
                    q.normal_(0, 0.1, generator=torch.Generator().manual_seed(seed))
        save_adapter(m, tmp_path / f"a{seed}", base_model=str(tiny_dir))
        adapters.append(diffu_grpo.merge_record(tmp_path / f"a{seed}", str(tiny_dir)))
    assert adapters[0]["sha256"] != adapters[1]["sha256"]
    folder = tmp_path / "run" / "init-merged"
    assert diffu_grpo.check_init_merged(folder, adapters[0]) is False  # nothing to reuse: write it
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="an unrecorded adapter"):  # an init-merged of an older version
        diffu_grpo.check_init_merged(folder, adapters[0])
    (folder / "merged_from.json").write_text(json.dumps(adapters[0]))
    assert diffu_grpo.check_init_merged(folder, adapters[0]) is True
    with pytest.raises(ValueError, match=f"merged from {adapters[0]['adapter']} .* not from --init "
                                         f"{adapters[1]['adapter']}"):
        diffu_grpo.check_init_merged(folder, adapters[1])


def test_demo_refuses_an_earlier_demo_run(tmp_path, monkeypatch):
    monkeypatch.setattr(sudoku_demo, "run_seed", lambda *a, **k: pytest.fail("ran over an earlier demo"))
    (tmp_path / "seed0" / "sft").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="seed0 already holds a run \\(sft\\): pass --overwrite"):
        sudoku_demo.main(["--quick", "--out-dir", str(tmp_path)])


# ----------------------------------------------------------------------------- errors


def test_known_errors_are_one_line(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")

    def message(fn, *args) -> str:
        with pytest.raises(SystemExit) as e:
            run_cli(lambda argv: fn(*args))
        assert isinstance(e.value.code, str) and len(e.value.code.splitlines()) == 1, e.value.code
        return e.value.code

    assert message(data.read_rows, empty).endswith(f"error: {empty}: the file has no rows")
    assert message(model.resolve_checkpoint, "nobody-xyz/no-such-model").endswith(  # offline (conftest)
        "'nobody-xyz/no-such-model' is not a local folder and not in the Hugging Face cache, and the hub cannot be "
        "reached (offline?): download it once while online (`hf download nobody-xyz/no-such-model`), or pass a "
        "local folder")
    assert "error: FileNotFoundError: [Errno 2] No such file or directory" in message(open, tmp_path / "nothing")


def test_checkpoint_errors_are_one_line(tiny_dir, tmp_path):
    """A cut-off .safetensors names the file; a KeyError's message is printed as written (str(KeyError) quotes it)."""
    def message(folder) -> str:
        with pytest.raises(SystemExit) as e:
            run_cli(lambda argv: model.LLaDA.from_pretrained(folder))
        assert "\n" not in e.value.code
        return e.value.code

    cut, broken = tmp_path / "cut", tmp_path / "broken"
    shutil.copytree(tiny_dir, cut)
    weights = (cut / "model.safetensors").read_bytes()
    (cut / "model.safetensors").write_bytes(weights[:len(weights) // 2])
    assert f"error: {cut / 'model.safetensors'} is not a complete safetensors file" in message(cut)
    shutil.copytree(tiny_dir, broken)
    tensors = load_file(broken / "model.safetensors")
    save_file({k: v for k, v in tensors.items() if k != "model.transformer.ff_out.weight"},
              broken / "model.safetensors")
    assert message(broken).endswith(f"error: checkpoint {broken} is missing 1 tensor(s), e.g. "
                                    "['model.transformer.ff_out.weight']")


def test_unexpected_errors_keep_their_traceback(monkeypatch, tmp_path):
    with pytest.raises(RuntimeError):  # inside torch: a bug, not a user error
        run_cli(lambda argv: torch.ones(2) @ torch.ones(3))
    with pytest.raises(ValueError):  # raised inside an expression of model.py (int("x")), not by a raise statement
        run_cli(lambda argv: model.example_generator("x"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    monkeypatch.setenv("D1_DEBUG", "1")
    with pytest.raises(ValueError, match="the file has no rows"):
        run_cli(lambda argv: data.read_rows(empty))


def test_empty_sft_file_and_eval_file_are_one_line(tmp_path, tiny_dir):
    """The subprocess a user runs: exit status 1 and one line naming the file (not --max-length, no traceback)."""
    empty = tmp_path / "pairs.jsonl"
    empty.write_text("\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "sft.py", *sft_args(empty, tmp_path / "o")], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert r.returncode == 1 and r.stderr.strip() == f"sft.py: error: {empty}: the file has no rows", r.stderr
    csv = tmp_path / "empty.csv"
    csv.write_text("Puzzle,Solution\n")
    with pytest.raises(SystemExit) as e:
        run_cli(ev.main, ["--model", str(tiny_dir), "--task", "sudoku", "--data-path", str(csv), "--style", "compact",
                          "--gen-length", "16", "--block-length", "8", "--out-dir", str(tmp_path / "e")])
    assert e.value.code.endswith(f"error: {csv}: the file has no rows") and "\n" not in e.value.code


# ----------------------------------------------------------------------------- data options


def test_countdown_test_path_reaches_the_data(tmp_path, monkeypatch):
    train, test = tmp_path / "cd_train.jsonl", tmp_path / "cd_test.jsonl"
    train.write_text(json.dumps({"nums": [1, 2, 3], "target": 6}) + "\n")
    test.write_text(json.dumps({"input": "1,2,3", "output": "6"}) + "\n")
    seen = []

    class Stop(Exception):
        pass

    def load_tasks(*a, **k):
        seen.append(k.get("test_path"))
        raise Stop
    monkeypatch.setattr(diffu_grpo.data, "load_tasks", load_tasks)
    with pytest.raises(Stop):
        diffu_grpo.main(["--init", "tiny", "--task", "countdown", "--train-path", str(train), "--countdown-test-path",
                         str(test), "--out-dir", str(tmp_path / "rl"), "--gen-length", "16", "--block-length", "8",
                         "--diffusion-steps", "8", "--prompts-per-step", "2", "--num-generations", "2",
                         "--micro-batch-size", "2", "--lora-r", "2"])
    assert seen == [str(test)]
    monkeypatch.setattr(ev, "load_tasks", load_tasks)
    monkeypatch.setattr(ev, "load_tokenizer", lambda *a: None)
    with pytest.raises(Stop):
        ev.main(["--model", str(tmp_path), "--task", "countdown", "--split", "val", "--data-path", str(train),
                 "--countdown-test-path", str(test), "--out-dir", str(tmp_path / "e")])
    assert seen == [str(test)] * 2


# ----------------------------------------------------------------------------- logging


class FakeWandb:
    def __init__(self):
        self.logged, self.inits, self.finished = [], [], False

    def init(self, **kw):
        self.inits.append(kw)
        return self

    def log(self, row, step):
        self.logged.append((step, row))

    def finish(self):
        self.finished = True


class FakeWriter:
    scalars = []

    def __init__(self, logdir):
        self.logdir = logdir

    def add_scalar(self, key, value, step):
        FakeWriter.scalars.append((key, value, step))

    def flush(self):
        pass

    def close(self):
        pass


def test_wandb_and_tensorboard_get_the_metrics_jsonl_numbers(sort_jsonl, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli.importlib.util, "find_spec", lambda name: None)  # neither package installed
    assert "--wandb p: needs the optional package 'wandb'" in refused(sft.parse_args, ["--wandb", "p"], capsys)
    assert "needs the optional package 'tensorboard'" in refused(diffu_grpo.parse_args, ["--tensorboard", "tb"],
                                                                 capsys)
    monkeypatch.undo()

    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=FakeWriter))
    monkeypatch.setattr(cli.importlib.util, "find_spec", lambda name: object())  # "installed"
    FakeWriter.scalars = []
    out = tmp_path / "sft"
    sft.main(sft_args(sort_jsonl, out, "--max-steps", "2", "--eval-every", "1", "--wandb", "proj", "--tensorboard",
                      str(tmp_path / "tb")))
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    want = [(r["step"], {k: v for k, v in r.items() if k != "step"}) for r in rows]
    assert fake.logged == want and fake.finished and fake.inits[0]["project"] == "proj"
    assert FakeWriter.scalars == [(k, v, s) for s, row in want for k, v in row.items()]
