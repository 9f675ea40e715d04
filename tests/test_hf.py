"""Hugging Face OlmoForCausalLM interop: same logits both ways; import works without transformers."""

import json
import sys

import pytest
import torch

from echochamber.hf import export_hf, import_hf
from echochamber.model import ModelConfig, OLMo


def random_model(tied: bool, clip_qkv: float | None = None, seed: int = 0) -> OLMo:
    """A small OLMo with large random weights (std 0.1) so that any mapping mistake shows in the logits."""
    torch.manual_seed(seed)
    cfg = ModelConfig(preset="custom", d_model=64, n_layers=3, n_heads=4, mlp_hidden=80, max_seq_len=128,
                      tie_embeddings=tied, init_std=0.1, clip_qkv=clip_qkv, rope_theta=5000.0, vocab_size=101)
    return OLMo(cfg.resolve()).eval()


def hf_or_skip():
    return pytest.importorskip("transformers", reason="transformers is not installed (it is in the 'test' extra): "
                                                      "HF logits parity is skipped")


@pytest.mark.parametrize("tied, clip_qkv", [(True, None), (False, 0.4)])
def test_export_to_hf_gives_the_same_logits(tmp_path, tied, clip_qkv):
    transformers = hf_or_skip()
    ours = random_model(tied, clip_qkv)
    export_hf(ours, tmp_path, eos_token_id=100)
    hf = transformers.OlmoForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert hf.config.tie_word_embeddings is tied and hf.config.clip_qkv == clip_qkv
    x = torch.randint(0, 101, (3, 50))
    with torch.no_grad():
        a, b = ours(x), hf(x).logits
    assert a.abs().max() > 1.0  # the comparison is not between near-zero numbers
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


@pytest.mark.parametrize("tied", [True, False])
def test_import_from_hf_gives_the_same_logits(tmp_path, tied):
    transformers = hf_or_skip()
    torch.manual_seed(1)
    config = transformers.OlmoConfig(vocab_size=101, hidden_size=64, intermediate_size=80, num_hidden_layers=3,
                                     num_attention_heads=4, max_position_embeddings=128, tie_word_embeddings=tied,
                                     clip_qkv=0.5 if not tied else None, initializer_range=0.1, pad_token_id=0,
                                     eos_token_id=100)
    hf = transformers.OlmoForCausalLM(config).eval()
    with torch.no_grad():  # HF initialises some matrices to zero-ish; make every weight matter
        for p in hf.parameters():
            p.normal_(0, 0.1)
    hf.save_pretrained(tmp_path)
    ours = import_hf(tmp_path)
    assert ours.config.tie_embeddings is tied and ours.config.n_layers == 3
    x = torch.randint(0, 101, (2, 60))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), hf(x).logits, atol=1e-4, rtol=0)


def test_round_trip_without_transformers(tmp_path, monkeypatch):
    """export_hf -> import_hf restores the exact weights, with transformers made unimportable."""
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` now raises ImportError
    for tied in (True, False):
        ours = random_model(tied, clip_qkv=0.7, seed=3)
        export_hf(ours, tmp_path / str(tied))
        back = import_hf(tmp_path / str(tied))
        assert back.config == ours.config
        for (name, a), (_, b) in zip(ours.state_dict().items(), back.state_dict().items()):
            assert torch.equal(a, b), name


def test_export_names_and_tokenizer(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"a": 0, "b": 1, "<|endoftext|>": 2}, unk_token="a"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tok.json"))
    ours = random_model(tied=False)
    export_hf(ours, tmp_path / "hf", tokenizer_path=tmp_path / "tok.json")
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert cfg["model_type"] == "olmo" and cfg["architectures"] == ["OlmoForCausalLM"]
    assert cfg["eos_token_id"] == 2 and cfg["intermediate_size"] == 80 and cfg["tie_word_embeddings"] is False
    assert (tmp_path / "hf" / "tokenizer.json").read_bytes() == (tmp_path / "tok.json").read_bytes()
    from safetensors import safe_open

    with safe_open(str(tmp_path / "hf" / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "model.layers.2.self_attn.q_proj.weight" in keys and "lm_head.weight" in keys
    assert "model.layers.0.mlp.gate_proj.weight" in keys and len(keys) == 2 + 3 * 7


def test_import_rejects_other_architectures(tmp_path):
    export_hf(random_model(tied=True), tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "model_type": "llama"}))
    with pytest.raises(ValueError, match=r"config.json.*model_type"):
        import_hf(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "num_key_value_heads": 2}))
    with pytest.raises(ValueError, match="num_key_value_heads"):
        import_hf(tmp_path)
    with pytest.raises(FileNotFoundError, match="config.json"):
        import_hf(tmp_path / "nowhere")
