"""Command-line plumbing shared by every script: argument types and checks, --help, one-line errors.

Every script checks its arguments right after parsing, before anything slow (the model, the data, the process
group): a bad value is one argparse error naming the flag, the value and the rule (exit status 2). 0 means 0; an
unset option is None. `run_cli(main)` turns the errors the project raises on purpose (a bad row of data, a
refused folder, a missing file, no network) into one line each (exit status 1); a bug keeps its traceback, and
D1_DEBUG=1 keeps every traceback.

    ArgumentParser, HelpFormatter                    one-line errors; each default shown once in --help
    bounded, positive_int, nonneg_int, ...           argparse types with the rule in the error
    resolve_device, check_paths, check_model_arg, check_out_dir, check_lora_targets, check_optional_package
    run_cli                                          the scripts' entry point
"""
from __future__ import annotations

import argparse
import dis
import importlib.util
import math
import os
import sys
from pathlib import Path

import torch

from model import HUB_ID, LORA_TARGETS

# -----------------------------------------------------------------------------
# Arguments
#
# Every script checks its arguments right after parsing, before anything slow (the model, the data, the process
# group): a bad value is one argparse error naming the flag, the value and the rule (exit status 2). 0 means 0;
# an unset option is None. The run folder (--out-dir) is claimed before anything loads (claim_out_dir), and
# run_cli turns the errors the project raises on purpose into one line each (exit status 1).


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser with one-line errors, "sft.py: error: argument --epochs: must be >= 1, got 0", without
    the usage summary of every flag in front (--help shows it)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def bounded(kind=int, lo=None, hi=None, *, lo_open: bool = False, hi_open: bool = False):
    """An argparse `type`: a finite number of `kind` (int or float) in [lo, hi], an end open with lo_open/hi_open.
    argparse reports a value outside as "argument --flag: must be >= 1, got 0"."""
    rule = " and ".join([f"{'>' if lo_open else '>='} {lo}"] * (lo is not None)
                        + [f"{'<' if hi_open else '<='} {hi}"] * (hi is not None))

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got "
                                             f"{text!r}") from None
        below = lo is not None and (value <= lo if lo_open else value < lo)
        above = hi is not None and (value >= hi if hi_open else value > hi)
        if not math.isfinite(value) or below or above:
            raise argparse.ArgumentTypeError(f"must be {rule or 'finite'}, got {text}")
        return value
    return parse


positive_int = bounded(int, 1)  # counts that cannot be 0: batch sizes, lengths, mu, ...
nonneg_int = bounded(int, 0)  # counts where 0 means zero (steps, warmup, "every N" where 0 = never)
nonneg_float = bounded(float, 0.0)


def seed_list(text: str) -> list[int]:
    """An argparse `type`: comma-separated seeds "0,1,2" -> [0, 1, 2], each an integer >= 0."""
    try:
        return [nonneg_int(s) for s in text.split(",")]
    except argparse.ArgumentTypeError as e:
        raise argparse.ArgumentTypeError(f"each seed {e}") from None
positive_float = bounded(float, 0.0, lo_open=True)
probability = bounded(float, 0.0, 1.0)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help that shows each default once: "(default: X)" is added unless the help text already says what
    happens by default, or the default is None or False (unset, off)."""

    def _get_help_string(self, action):
        text = action.help or ""
        unset = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if "default" in text or unset or not action.option_strings:
            return text
        return text + " (default: %(default)s)"


def resolve_device(parser: argparse.ArgumentParser, args) -> None:
    """--device auto -> cuda when torch sees a GPU, else cpu; --dtype auto -> bfloat16 on cuda, else float32 (in
    place). A device this machine lacks is a parser error, raised before anything loads."""
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(args.device)
    except RuntimeError:
        parser.error(f"--device {args.device}: not a device (auto, cpu, cuda, cuda:N)")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            parser.error(f"--device {args.device}: torch {torch.__version__} sees no CUDA GPU (CUDA build: "
                         f"{torch.version.cuda}); use --device cpu, or install the torch build for your CUDA")
        if device.index is not None and device.index >= torch.cuda.device_count():
            parser.error(f"--device {args.device}: this machine has {torch.cuda.device_count()} GPU(s)")
    if getattr(args, "dtype", None) == "auto":
        args.dtype = "bfloat16" if device.type == "cuda" else "float32"


def check_optional_package(parser: argparse.ArgumentParser, flag: str, value, module: str, install: str) -> None:
    """A flag that needs an optional package (--wandb: wandb, --tensorboard: tensorboard) is refused at start-up
    when the package is missing, not after the model loaded."""
    if value and importlib.util.find_spec(module) is None:
        parser.error(f"{flag} {value}: needs the optional package {module!r}, which is not installed "
                     f"(pip install {install})")


def check_out_dir(parser: argparse.ArgumentParser, flag: str, path) -> None:
    """An output folder that is a file, or lies under one, is a parser error (it would fail after loading)."""
    for p in [Path(path), *Path(path).parents]:
        if p.exists():
            if not p.is_dir():
                parser.error(f"{flag} {path}: {p} is a file, not a folder")
            return


def check_paths(parser: argparse.ArgumentParser, flag: str, value) -> None:
    """Every comma-separated path of an option must exist (a data file, a folder, a checkpoint)."""
    for path in [v.strip() for v in str(value).split(",") if v.strip()] if value else []:
        if not Path(path).exists():
            parser.error(f"{flag} {value}: no such file or folder: {path}")


def check_training_run(parser: argparse.ArgumentParser, args, lr0_warning: str) -> None:
    """The checks sft.py and diffu_grpo.py share, after their own: --resume / --export paths, --resume against
    --overwrite, --out-dir and --tensorboard folders, the loggers' optional packages, the device (resolved in
    place). --lr 0 is allowed (a diagnostic run), with lr0_warning printed on rank 0."""
    if args.resume not in (None, "auto"):
        check_paths(parser, "--resume", args.resume)
    if args.export:
        check_paths(parser, "--export", args.export)
    if args.resume and args.overwrite:
        parser.error("--resume continues the run in --out-dir, --overwrite deletes it: pass one of them")
    check_out_dir(parser, "--out-dir", args.out_dir)
    check_optional_package(parser, "--wandb", args.wandb, "wandb", "wandb")
    check_optional_package(parser, "--tensorboard", args.tensorboard, "tensorboard", "tensorboard")
    if args.tensorboard:
        check_out_dir(parser, "--tensorboard", args.tensorboard)
    resolve_device(parser, args)
    if args.lr == 0 and os.environ.get("RANK", "0") == "0" and args.export is None:
        print(f"warning: --lr 0: {lr0_warning} (a diagnostic run)", file=sys.stderr)


def check_model_arg(parser: argparse.ArgumentParser, flag: str, value) -> None:
    """A model is a checkpoint folder or a hub id (owner/name): a missing local path or a file is refused here,
    a hub id is looked up when the model loads."""
    if value is None:
        return
    p = Path(value)
    if p.exists() and not p.is_dir():
        parser.error(f"{flag} {value}: a file; expected a checkpoint folder (config.json + *.safetensors) or a hub id")
    if not p.exists() and not HUB_ID.fullmatch(str(value)):
        parser.error(f"{flag} {value}: no such folder (and not a hub id of the form owner/name)")


def check_lora_targets(parser: argparse.ArgumentParser, flag: str, value: str) -> None:
    """Comma-separated block Linear layers, each one of LORA_TARGETS."""
    unknown = sorted(set(t.strip() for t in value.split(",")) - set(LORA_TARGETS))
    if unknown:
        parser.error(f"{flag} {value}: unknown {', '.join(unknown)}; choose from {','.join(LORA_TARGETS)}")


PROJECT_DIR = Path(__file__).resolve().parent
ENVIRONMENT_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, FileExistsError, PermissionError,
                      ConnectionError, TimeoutError, ImportError)


def raised_by_project(e: BaseException) -> bool:
    """Raised on purpose by a `raise` statement in this project's files: a message written for the user (a bad row
    of data, a refused folder, a wrong base model, ...), not an error inside an expression (torch ops, indexing)."""
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next  # the innermost frame: where it was raised
    if tb is None or Path(tb.tb_frame.f_code.co_filename).resolve().parent not in (PROJECT_DIR, PROJECT_DIR / "runs"):
        return False
    op = next((i.opname for i in dis.get_instructions(tb.tb_frame.f_code) if i.offset == tb.tb_lasti), None)
    return op == "RAISE_VARARGS"


def run_cli(main, argv=None):
    """Run a script's main(argv) as a command. The known failures, errors the project raises on purpose
    (raised_by_project) and file, network and missing-package errors (ENVIRONMENT_ERRORS), print one line,
    "<script>: error: <message>", and exit with status 1. Anything else (a bug, an error inside torch) keeps its
    traceback, and with D1_DEBUG=1 every error does."""
    try:
        status = main(argv)
    except Exception as e:
        ours = raised_by_project(e)
        if os.environ.get("D1_DEBUG", "0") not in ("", "0") or not (ours or isinstance(e, ENVIRONMENT_ERRORS)):
            raise
        text = e.args[0] if len(e.args) == 1 and isinstance(e.args[0], str) else str(e)  # KeyError: no quotes
        sys.exit(f"{Path(sys.argv[0]).name}: error: {text if ours else f'{type(e).__name__}: {text}'}")
    if "RANK" in os.environ:
        # Under torchrun, leave without interpreter finalization: gloo's worker threads can still hold tensors of
        # the last collectives, and freeing them during Python's shutdown aborts the process now and then
        # ("terminate called without an active exception", torch 2.13; pytorch/pytorch#179291) after the work
        # is done and written. The scripts have destroyed their process group and closed their files by now.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status or 0)
    return status
