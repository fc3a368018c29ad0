import json

import pytest
import torch

from model import (LLaDA, LoRALinear, apply_lora, load_adapter, load_tokenizer, lora_disabled, merge_lora,
                   resolve_checkpoint, save_adapter)


def ids_for(tokenizer, texts):
    tokenizer.padding_side = "left"
    enc = tokenizer([tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False) for t in texts],
                    return_tensors="pt", padding=True, add_special_tokens=False)
    return enc["input_ids"], enc["attention_mask"]


def test_roundtrip_single_and_sharded(tiny_model, tokenizer, tmp_path):
    ids, _ = ids_for(tokenizer, ["what is 2+2?"])
    ref = tiny_model(ids)
    for name, shard in [("single", 10**12), ("sharded", 20_000)]:
        tiny_model.save_pretrained(tmp_path / name, tokenizer=tokenizer, max_shard_bytes=shard)
        files = sorted(p.name for p in (tmp_path / name).iterdir())
        assert ("model.safetensors.index.json" in files) == (name == "sharded")
        loaded = LLaDA.from_pretrained(tmp_path / name).eval()
        torch.testing.assert_close(loaded(ids), ref, rtol=0, atol=0)
        assert load_tokenizer(tmp_path / name).encode("abc") == tokenizer.encode("abc")
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    assert "model.transformer.blocks.0.ff_proj.weight" in index["weight_map"]
    config = json.loads((tmp_path / "single" / "config.json").read_text())
    assert config["auto_map"]["AutoModel"].endswith("modeling_llada.LLaDAModelLM")


def test_load_bf16(tiny_dir):
    m = LLaDA.from_pretrained(tiny_dir, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in m.parameters())


def test_bad_checkpoints_name_the_key(tiny_model, tmp_path):
    from safetensors.torch import load_file, save_file
    tiny_model.save_pretrained(tmp_path / "ok")
    sd = load_file(tmp_path / "ok" / "model.safetensors")
    bad = dict(sd)
    bad["model.transformer.blocks.1.up_proj.weight"] = torch.zeros(3, 3)
    (tmp_path / "shape").mkdir()
    (tmp_path / "shape" / "config.json").write_text((tmp_path / "ok" / "config.json").read_text())
    save_file(bad, tmp_path / "shape" / "model.safetensors")
    with pytest.raises(ValueError, match=r"blocks\.1\.up_proj"):
        LLaDA.from_pretrained(tmp_path / "shape")
    del bad["model.transformer.blocks.1.up_proj.weight"]
    save_file(bad, tmp_path / "shape" / "model.safetensors")
    with pytest.raises(KeyError, match=r"blocks\.1\.up_proj"):
        LLaDA.from_pretrained(tmp_path / "shape")
    with pytest.raises(FileNotFoundError, match="no such checkpoint folder"):
        LLaDA.from_pretrained(tmp_path / "does-not-exist")
    with pytest.raises(FileNotFoundError, match="hub cannot be reached"):  # HF_HUB_OFFLINE=1 in conftest
        resolve_checkpoint("no-such-org/no-such-model")


def test_padding_invariance(tiny_model, tokenizer):
    ids, mask = ids_for(tokenizer, ["hi", "a much longer prompt here"])
    assert mask[0].sum() < mask.shape[1]  # row 0 is left-padded
    padded = tiny_model(ids, mask)
    for i in range(2):
        real = ids[i][mask[i].bool()][None]
        alone = tiny_model(real)
        torch.testing.assert_close(padded[i][mask[i].bool()], alone[0], rtol=1e-5, atol=1e-5)


def test_positions_restrict_head(tiny_model, tokenizer):
    ids, mask = ids_for(tokenizer, ["x", "yy yy"])
    full = tiny_model(ids, mask)
    torch.testing.assert_close(tiny_model(ids, mask, positions=slice(3, 7)), full[:, 3:7])
    idx = torch.tensor([0, 5, 2])
    torch.testing.assert_close(tiny_model(ids, mask, positions=idx), full[:, idx])


def test_lora_identities_and_adapter_roundtrip(tiny_model, tokenizer, tmp_path):
    ids, mask = ids_for(tokenizer, ["lora?", "b"])
    base = tiny_model(ids, mask)
    apply_lora(tiny_model, r=4, alpha=8, dropout=0.0)
    assert all(p.requires_grad == ("lora_" in n) for n, p in tiny_model.named_parameters())
    assert not isinstance(tiny_model.transformer.ff_out, LoRALinear)  # the output head is never adapted
    torch.testing.assert_close(tiny_model(ids, mask), base, rtol=0, atol=0)  # B = 0
    with torch.no_grad():
        for n, p in tiny_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    adapted = tiny_model(ids, mask)
    assert (adapted - base).abs().max() > 1e-3
    with lora_disabled(tiny_model):
        torch.testing.assert_close(tiny_model(ids, mask), base, rtol=0, atol=0)
    torch.testing.assert_close(tiny_model(ids, mask), adapted)  # re-enabled on exit

    save_adapter(tiny_model, tmp_path / "adapter", base_model="tiny")
    from safetensors.torch import load_file
    keys = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert keys["base_model.model.model.transformer.blocks.0.q_proj.lora_A.weight"].shape == (4, 64)
    assert keys["base_model.model.model.transformer.blocks.0.ff_out.lora_B.weight"].shape == (64, 4)
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 4 and cfg["lora_alpha"] == 8

    merged = merge_lora(tiny_model)
    assert not any(isinstance(m, LoRALinear) for m in merged.modules())
    torch.testing.assert_close(merged(ids, mask), adapted, rtol=1e-5, atol=1e-5)


def test_load_adapter(tiny_dir, tokenizer, tmp_path):
    ids, mask = ids_for(tokenizer, ["adapter"])
    m = LLaDA.from_pretrained(tiny_dir).eval()
    apply_lora(m, r=2, alpha=4, targets=("q_proj", "up_proj"))
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    want = m(ids, mask)
    save_adapter(m, tmp_path / "ad", base_model=str(tiny_dir))
    m2 = load_adapter(LLaDA.from_pretrained(tiny_dir).eval(), tmp_path / "ad")
    torch.testing.assert_close(m2(ids, mask), want, rtol=0, atol=0)
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        load_adapter(LLaDA.from_pretrained(tiny_dir), tmp_path)


def test_last_block_for_some_rows_equals_slicing_the_full_forward(tiny_model):
    """forward(positions=...) runs the last block's queries, attention output and MLP for those positions only
    (keys and values still from every position): the same hidden states as slicing a full forward."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, 60, (3, 20), generator=g)
    am = torch.ones_like(ids)
    am[0, :6] = 0  # left padding
    with torch.no_grad():
        full = tiny_model(ids, am, return_hidden=True)
        for rows in (slice(12, 20), slice(0, 1), torch.tensor([2, 5, 19])):
            part = tiny_model(ids, am, positions=rows, return_hidden=True)
            torch.testing.assert_close(part, full[:, rows], rtol=0, atol=1e-5)
            torch.testing.assert_close(tiny_model(ids, am, positions=rows), tiny_model.head(full[:, rows]),
                                       rtol=0, atol=1e-5)
