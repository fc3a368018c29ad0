"""Hugging Face interop of what model.py writes: config.json (true dtype, local auto_map), tokenizer folders,
adapters (task_type, options refused by name, rslora), bases that were never saved, and short errors for
truncated files and unreachable hub ids.

transformers and peft are exercised in subprocesses (stdin closed, HF_HUB_OFFLINE=1, a private HF cache) where
they would load code: the official modeling file is not part of this repository, so the "remote code" beside
an export is a stand-in the test writes (STUB_*): the real loading path of transformers (auto_map resolved in
the folder, torch_dtype, the checkpoint keys) with our network behind it."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from tests.helpers import ROOT
from model import (AUTO_MAP, Config, LLaDA, LoRALinear, adapter_base, apply_lora, check_adapter_config, load_adapter,
                   load_tokenizer, preset_config, resolve_checkpoint, save_adapter, special_ids)
from train_utils import save_checkpoint

STUB_CONFIG = """
from transformers import PretrainedConfig


class LLaDAConfig(PretrainedConfig):
    model_type = "llada"
"""
STUB_MODELING = """
from transformers import PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput

import model as ours  # this repository's model.py (on PYTHONPATH)

from .configuration_llada import LLaDAConfig


class LLaDAModelLM(PreTrainedModel):
    config_class = LLaDAConfig
    base_model_prefix = "model"

    def __init__(self, config):
        super().__init__(config)
        self.model = ours.LLaDA(ours.Config.from_dict(config.to_dict()))  # keys: model.transformer.*
        self.post_init()

    def _init_weights(self, module):
        pass  # every weight comes from the checkpoint

    def forward(self, input_ids, attention_mask=None, **kwargs):
        return CausalLMOutput(logits=self.model(input_ids, attention_mask))

    def prepare_inputs_for_generation(self, input_ids, **kwargs):  # the official class has one; peft needs it
        return {"input_ids": input_ids, **kwargs}

    def get_input_embeddings(self):
        return self.model.transformer.wte
"""
PROMPT = "Do you wish to run the custom code"


def run_python(code: str, tmp_path, timeout: float = 240) -> dict:
    """Run `code` in a fresh interpreter (no stdin, offline, a private HF cache); it prints one JSON line last."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf-home"), PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1",
               OMP_WAIT_POLICY="PASSIVE", TOKENIZERS_PARALLELISM="false")
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert PROMPT not in r.stdout + r.stderr, "transformers asked for remote code:\n" + r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def export(folder, tokenizer, dtype=torch.float32, seed=0, stubs=True):
    model = LLaDA(preset_config("tiny", tokenizer)).init_weights(seed).to(dtype)
    model.save_pretrained(folder, tokenizer=tokenizer)
    if stubs:  # the user's documented copy step (README, "Hugging Face interop"), with stand-ins
        (folder / "configuration_llada.py").write_text(STUB_CONFIG)
        (folder / "modeling_llada.py").write_text(STUB_MODELING)
    return model


def randomize_lora(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


IDS = [[1, 10, 20, 30, 40, 5, 2, 2]]


# -----------------------------------------------------------------------------
# config.json


def test_config_records_true_dtype_and_local_auto_map(tokenizer, tmp_path):
    for dtype, name in [(torch.float32, "float32"), (torch.bfloat16, "bfloat16")]:
        export(tmp_path / name, tokenizer, dtype, stubs=False)
        cfg = json.loads((tmp_path / name / "config.json").read_text())
        assert cfg["torch_dtype"] == name and "dtype" not in cfg
        assert cfg["auto_map"] == AUTO_MAP and all("--" not in v for v in cfg["auto_map"].values())
    # A config loaded from elsewhere (transformers 5 writes "dtype", the release says bfloat16) keeps neither.
    cfg = Config.from_dict({**preset_config("tiny", tokenizer).to_dict(), "dtype": "bfloat16",
                            "torch_dtype": "bfloat16", "auto_map": {"AutoModel": "GSAI-ML/x--modeling_llada.M"}})
    out = cfg.to_dict(dtype=torch.float32)
    assert out["torch_dtype"] == "float32" and "dtype" not in out and out["auto_map"] == AUTO_MAP
    model = LLaDA(preset_config("tiny", tokenizer))
    model.transformer.ln_f.to(torch.bfloat16)
    with pytest.raises(ValueError, match="mixed dtypes"):
        model.save_pretrained(tmp_path / "mixed")


# -----------------------------------------------------------------------------
# transformers: the export with the modeling files beside it, offline; tokenizer folders without a prompt


@pytest.fixture(scope="module")
def hf_loaded(tmp_path_factory, tokenizer):
    """Exports (fp32, bf16) and an adapter checkpoint, loaded by transformers in one subprocess."""
    tmp = tmp_path_factory.mktemp("hf")
    ours = {name: export(tmp / name, tokenizer, dtype) for name, dtype in
            [("fp32", torch.float32), ("bf16", torch.bfloat16)]}
    lora = randomize_lora(apply_lora(LLaDA.from_pretrained(tmp / "fp32"), r=2, alpha=4))
    save_checkpoint(tmp / "adapter-ckpt", lora, tokenizer=tokenizer, base_model=str(tmp / "fp32"))
    got = run_python(f"""
        import json, torch, transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer
        kw = {{"dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype": "auto"}}
        out = {{}}
        for name in ("fp32", "bf16"):
            m = AutoModelForCausalLM.from_pretrained({str(tmp)!r} + "/" + name, trust_remote_code=True, **kw)
            tok = AutoTokenizer.from_pretrained({str(tmp)!r} + "/" + name, trust_remote_code=True)
            out[name] = {{"dtype": str(next(m.parameters()).dtype),
                         "logits": m(torch.tensor({IDS})).logits.float().tolist(),
                         "ids": tok.encode("abc <answer>1</answer><|eot_id|>"), "mask": tok.mask_token}}
        # Without the modeling code: trust_remote_code=False reads the tokenizer and never asks.
        tok = AutoTokenizer.from_pretrained({str(tmp)!r} + "/fp32", trust_remote_code=False)
        out["no_code_ids"] = tok.encode("abc")
        # An adapter checkpoint has no config.json: a plain call, no prompt.
        tok = AutoTokenizer.from_pretrained({str(tmp)!r} + "/adapter-ckpt")
        out["adapter_ids"] = tok.encode("abc")
        print(json.dumps(out))
    """, tmp)
    return tmp, ours, got


def test_transformers_loads_export_offline_in_its_dtype(hf_loaded, tokenizer):
    tmp, ours, got = hf_loaded
    ids = torch.tensor(IDS)
    for name, dtype in [("fp32", "torch.float32"), ("bf16", "torch.bfloat16")]:
        assert got[name]["dtype"] == dtype  # config.json's torch_dtype, not always bfloat16
        with torch.no_grad():
            want = ours[name].eval()(ids).float()
        torch.testing.assert_close(torch.tensor(got[name]["logits"]), want, rtol=0, atol=0)
        assert got[name]["ids"] == tokenizer.encode("abc <answer>1</answer><|eot_id|>")
        assert got[name]["mask"] == "<|mdm_mask|>"
    assert got["no_code_ids"] == got["adapter_ids"] == tokenizer.encode("abc")


def test_saved_tokenizer_config_is_readable_by_transformers_4_and_5(hf_loaded, tokenizer):
    tmp, _, _ = hf_loaded
    for folder in (tmp / "fp32", tmp / "adapter-ckpt"):
        cfg = json.loads((folder / "tokenizer_config.json").read_text())
        # transformers 4 knows neither "TokenizersBackend" nor a list under "extra_special_tokens"
        assert cfg["tokenizer_class"] == "PreTrainedTokenizerFast"
        assert not isinstance(cfg.get("extra_special_tokens"), list)
        tok = load_tokenizer(folder)
        assert len(tok) == len(tokenizer) and special_ids(tok) == special_ids(tokenizer)
        assert tok.encode("x<|eot_id|><|start_header_id|>") == tokenizer.encode("x<|eot_id|><|start_header_id|>")
        chat = [{"role": "user", "content": "hi"}]
        assert tok.apply_chat_template(chat, tokenize=False) == tokenizer.apply_chat_template(chat, tokenize=False)


# -----------------------------------------------------------------------------
# peft


def test_peft_loads_our_adapter_from_its_recorded_base(hf_loaded, tmp_path):
    pytest.importorskip("peft")
    tmp, _, _ = hf_loaded
    base = tmp / "fp32"
    model = randomize_lora(apply_lora(LLaDA.from_pretrained(base), r=4, alpha=16, targets=("q_proj", "ff_out")), 1)
    save_adapter(model, tmp_path / "adapter", base_model=str(base))
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert cfg["task_type"] == "CAUSAL_LM" and cfg["base_model_name_or_path"] == str(base)
    got = run_python(f"""
        import json, torch
        from peft import AutoPeftModelForCausalLM
        m = AutoPeftModelForCausalLM.from_pretrained({str(tmp_path / "adapter")!r}, trust_remote_code=True)
        print(json.dumps(m(torch.tensor({IDS})).logits.tolist()))
    """, tmp_path)
    with torch.no_grad():
        want = model.eval()(torch.tensor(IDS))
    torch.testing.assert_close(torch.tensor(got), want, rtol=1e-5, atol=1e-5)


def peft_adapter(base_dir, folder, **lora_kwargs):
    """An adapter made by peft itself on a module tree shaped like the release's (model.transformer.blocks...)."""
    peft = pytest.importorskip("peft")

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = LLaDA.from_pretrained(base_dir)

        def forward(self, ids):
            return self.model(ids)

    cfg = peft.LoraConfig(target_modules=r".*blocks\.\d+\.(q_proj|up_proj)", **lora_kwargs)
    pm = randomize_lora(peft.get_peft_model(Wrapper(), cfg), 2)
    pm.save_pretrained(folder)
    with torch.no_grad():
        return pm.eval()(torch.tensor(IDS))


def test_rslora_adapter_from_peft_matches_peft(tiny_dir, tmp_path):
    want = peft_adapter(tiny_dir, tmp_path / "rs", r=4, lora_alpha=8, use_rslora=True)
    assert json.loads((tmp_path / "rs" / "adapter_config.json").read_text())["use_rslora"] is True
    ours = load_adapter(LLaDA.from_pretrained(tiny_dir), tmp_path / "rs").eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(torch.tensor(IDS)), want, rtol=1e-5, atol=1e-5)
    assert ours.transformer.blocks[0].q_proj.scale == 8 / 2  # alpha / sqrt(r), not alpha / r


def test_peft_options_we_do_not_implement_are_refused_by_name(tiny_dir, tmp_path):
    peft_adapter(tiny_dir, tmp_path / "ap", r=4, lora_alpha=8, alpha_pattern={"q_proj": 32})
    with pytest.raises(ValueError, match="alpha_pattern"):
        load_adapter(LLaDA.from_pretrained(tiny_dir), tmp_path / "ap")


def test_adapter_config_check():
    ok = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 4, "lora_alpha": 8, "lora_dropout": 0.0,
          "bias": "none", "use_rslora": True, "use_dora": False, "alpha_pattern": {}, "rank_pattern": {},
          "modules_to_save": None, "layers_to_transform": None, "megatron_core": "megatron.core",
          "qalora_group_size": 16, "loftq_config": {}, "peft_version": "0.21.2", "init_lora_weights": True}
    check_adapter_config(ok, "a")
    for key, value in [("use_dora", True), ("rank_pattern", {"q_proj": 8}), ("alpha_pattern", {"q_proj": 2}),
                       ("layers_to_transform", [0]), ("modules_to_save", ["lm_head"]), ("bias", "all"),
                       ("lora_bias", True), ("fan_in_fan_out", True), ("use_fancy_new_lora", True)]:
        with pytest.raises(ValueError, match=rf"sets {key}=") as e:
            check_adapter_config({**ok, key: value}, "a")
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="only LoRA"):
        check_adapter_config({**ok, "peft_type": "IA3"}, "a")


def test_rslora_roundtrip(tiny_dir, tmp_path):
    m = randomize_lora(apply_lora(LLaDA.from_pretrained(tiny_dir), r=4, alpha=8, rslora=True)).eval()
    assert m.transformer.blocks[1].v_proj.scale == 4.0
    save_adapter(m, tmp_path / "a", base_model=str(tiny_dir))
    assert json.loads((tmp_path / "a" / "adapter_config.json").read_text())["use_rslora"] is True
    m2 = load_adapter(LLaDA.from_pretrained(tiny_dir), tmp_path / "a").eval()
    torch.testing.assert_close(m2(torch.tensor(IDS)), m(torch.tensor(IDS)), rtol=0, atol=0)


# -----------------------------------------------------------------------------
# An adapter whose base was never saved travels with it


def test_random_base_is_saved_with_the_adapter(tokenizer, tmp_path):
    model = randomize_lora(apply_lora(LLaDA(preset_config("tiny", tokenizer)).init_weights(7), r=2, alpha=4)).eval()
    save_checkpoint(tmp_path / "step-000001", model, tokenizer=tokenizer, base_model=None)
    ckpt = tmp_path / "step-000001"
    assert adapter_base(ckpt) == str(ckpt / "base") and not list(tmp_path.glob("*.tmp*"))
    from safetensors.torch import load_file
    assert not any("lora" in k for k in load_file(ckpt / "base" / "model.safetensors"))
    loaded = load_adapter(LLaDA.from_pretrained(adapter_base(ckpt)), ckpt).eval()
    torch.testing.assert_close(loaded(torch.tensor(IDS)), model(torch.tensor(IDS)), rtol=0, atol=0)
    assert load_tokenizer(adapter_base(ckpt)).encode("abc") == tokenizer.encode("abc")


def test_sft_from_scratch_with_lora_records_a_loadable_base(sort_jsonl, tmp_path, tokenizer):
    import eval as evaluation
    from sft import main
    main(["--init-from-scratch", "tiny", "--data", str(sort_jsonl), "--out-dir", str(tmp_path), "--val-frac", "0.1",
          "--device", "cpu", "--dtype", "float32", "--lora-r", "4", "--lr", "1e-2", "--epochs", "1",
          "--max-steps", "2", "--batch-size", "4", "--grad-accum", "1", "--eval-every", "0"])
    ckpt = tmp_path / "step-000002"
    assert adapter_base(ckpt) == str(ckpt / "base")  # not the hub model the random base never came from
    model = evaluation.load_model(None, ckpt, torch.float32, "cpu")
    want = load_adapter(LLaDA(preset_config("tiny", tokenizer)).init_weights(0), ckpt).eval()  # --seed 0
    with torch.no_grad():
        torch.testing.assert_close(model(torch.tensor(IDS)), want(torch.tensor(IDS)), rtol=0, atol=0)
    assert isinstance(model.transformer.blocks[0].q_proj, LoRALinear)


# -----------------------------------------------------------------------------
# Short errors: truncated files, hub ids offline


def test_truncated_files_name_themselves(tiny_dir, tokenizer, tmp_path):
    import shutil
    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_dir, folder)
    weights = folder / "model.safetensors"
    size = weights.stat().st_size
    for cut in (size // 2, 100, 4):
        shutil.copy(tiny_dir / "model.safetensors", weights)
        with open(weights, "r+b") as f:
            f.truncate(cut)
        with pytest.raises(ValueError, match="cut off while copying or downloading") as e:
            LLaDA.from_pretrained(folder)
        assert str(weights) in str(e.value) and "\n" not in str(e.value)
        assert e.value.__cause__ is None and e.value.__suppress_context__  # no chained safetensors traceback
    (folder / "config.json").write_text((tiny_dir / "config.json").read_text()[:50])
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        LLaDA.from_pretrained(folder)

    m = randomize_lora(apply_lora(LLaDA.from_pretrained(tiny_dir), r=2, alpha=4))
    save_adapter(m, tmp_path / "ad", base_model=str(tiny_dir))
    with open(tmp_path / "ad" / "adapter_model.safetensors", "r+b") as f:
        f.truncate(200)
    with pytest.raises(ValueError, match="adapter_model.safetensors is not a complete safetensors file"):
        load_adapter(LLaDA.from_pretrained(tiny_dir), tmp_path / "ad")

    LLaDA.from_pretrained(tiny_dir).save_pretrained(tmp_path / "sharded", max_shard_bytes=20_000)
    next((tmp_path / "sharded").glob("model-00002-*.safetensors")).unlink()
    with pytest.raises(FileNotFoundError, match="model-00002-of-.* is missing"):
        LLaDA.from_pretrained(tmp_path / "sharded")


def test_offline_hub_id_is_one_short_error():
    # HF_HUB_OFFLINE=1 (conftest): the hub's own chain (OfflineModeIsEnabled -> LocalEntryNotFoundError) is cut
    for call in (resolve_checkpoint, load_tokenizer):
        with pytest.raises(FileNotFoundError, match="hub cannot be reached") as e:
            call("no-such-org/no-such-model")
        msg = str(e.value)
        assert "\n" not in msg and "no-such-org/no-such-model" in msg and len(msg) < 300
        assert e.value.__cause__ is None and e.value.__suppress_context__
