"""Shared fixtures: a character tokenizer with LLaDA's special tokens and a tiny random LLaDA saved in the
HF layout, so every test goes through the real loading code."""
import json
import os
import random
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # shared cores: never spin-wait
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the network
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pytest
import torch

torch.set_num_threads(1)

from model import LLaDA, make_char_tokenizer, preset_config  # noqa: E402


@pytest.fixture(scope="session")
def tokenizer():
    return make_char_tokenizer()


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, tokenizer):
    """A tiny random LLaDA checkpoint folder (config.json + model.safetensors + tokenizer files)."""
    folder = tmp_path_factory.mktemp("tiny") / "ckpt"
    LLaDA(preset_config("tiny", tokenizer)).init_weights(seed=0).save_pretrained(folder, tokenizer=tokenizer)
    return folder


@pytest.fixture
def tiny_model(tiny_dir):
    return LLaDA.from_pretrained(tiny_dir).eval()


@pytest.fixture(scope="session")
def sort_jsonl(tmp_path_factory):
    """A small SFT file: "sort 312" -> "123" (prompt/answer JSONL)."""
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("data") / "sort.jsonl"
    with open(path, "w") as f:
        for _ in range(96):
            s = "".join(rng.choice("123456789") for _ in range(rng.randint(2, 6)))
            f.write(json.dumps({"prompt": f"sort {s}", "answer": "".join(sorted(s))}) + "\n")
    return path
