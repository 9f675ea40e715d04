"""Hugging Face OlmoForCausalLM interop: same logits both ways; import works without transformers."""

import json
import sys

import pytest
import torch

from echochamber.hf import export_hf, import_hf
from echochamber.model import ModelConfig, OLMo
from echochamber.tokenizer import Tokenizer


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


# ----------------------------------------------------------------------------- the authors' checkpoints' layout

def _llama_like_texts() -> list[str]:
    from echochamber.tasks.synthetic import generate, render_solution

    return [p.question + "\n\n" + render_solution(p, fmt) for p in generate("train", 120)
            for fmt in ("tinygsm", "omi1", "text")]


def test_import_llama_style_hf_folder(tmp_path, capsys):
    """A random HF OlmoForCausalLM saved with a Llama-style tokenizer (the layout of the authors' released
    checkpoints, config.json's eos_token_id 0 included) imports with its tokenizer: EOS </s> and BOS <s> come from
    the tokenizer, and the logits equal transformers' on the prompt the authors' evaluation built (<s> + question)."""
    transformers = hf_or_skip()
    from llama_like import save_llama_like

    from echochamber.cli import main
    from echochamber.evaluate import load_policy

    hf_dir = tmp_path / "OLMo-150M-as_fm3_tg_omi1-hf"
    save_llama_like(_llama_like_texts(), hf_dir, vocab_size=600)
    torch.manual_seed(2)
    config = transformers.OlmoConfig(vocab_size=600, hidden_size=64, intermediate_size=80, num_hidden_layers=2,
                                     num_attention_heads=4, max_position_embeddings=256, tie_word_embeddings=False,
                                     eos_token_id=0, pad_token_id=1, bos_token_id=None)  # as the authors' configs
    hf = transformers.OlmoForCausalLM(config).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0, 0.1)
    hf.save_pretrained(hf_dir)

    main(["import-hf", str(hf_dir), str(tmp_path / "ours")])
    out = capsys.readouterr()
    assert "EOS '</s>' = 2, BOS '<s>' = 1" in out.out and "says eos_token_id 0" in out.err
    model, tok = load_policy(tmp_path / "ours")
    assert (tok.eos_id, tok.bos_id) == (2, 1) and (tmp_path / "ours" / "tokenizer_config.json").exists()
    question = "Janet has 16 eggs and eats 3. How many are left?"
    ids = tok.encode_batch([question], add_bos=True)[0]
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(hf_dir / "tokenizer.json"))
    assert ids[0] == 1 and ids == fast(question)["input_ids"]  # what vLLM fed the authors' models
    x = torch.tensor([ids])
    with torch.no_grad():
        torch.testing.assert_close(model(x), hf(x).logits, atol=1e-4, rtol=0)


def test_llama_tokenizer_model_round_trips_through_export_and_import(tmp_path):
    """A model pretrained here on data tokenized with a Llama-style tokenizer exports (EOS and BOS from the
    tokenizer) and imports back with equal logits; transformers reads the export with the same logits."""
    from llama_like import save_llama_like

    from echochamber.cli import main
    from echochamber.config import load_run_config
    from echochamber.data import build_dataset
    from echochamber.evaluate import load_policy
    from echochamber.pretrain import pretrain

    tok_path = save_llama_like(_llama_like_texts(), tmp_path / "llama", vocab_size=600)
    cfg = load_run_config("smoke", [f"out_dir={tmp_path / 'run'}", f"data.tokenizer={tok_path}", "data.n_problems=300",
                                    "data.seq_len=64", "pretrain.max_steps=3", "pretrain.batch_size=4",
                                    "pretrain.warmup_steps=1", "pretrain.eval_every=3", "pretrain.ckpt_every=3"])
    manifest = build_dataset(cfg.data, tmp_path / "run" / "data", progress=False)
    vocab = Tokenizer.load(tok_path).vocab_size
    assert (manifest["vocab_size"], manifest["eos_id"]) == (vocab, 2)  # the Llama layout's </s>, not a trained BPE
    model_dir = pretrain(cfg, tmp_path / "run" / "pretrain", progress=False)

    main(["export-hf", str(model_dir), str(tmp_path / "hf")])
    hf_cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (hf_cfg["eos_token_id"], hf_cfg["bos_token_id"], hf_cfg["vocab_size"]) == (2, 1, vocab)
    tok_cfg = json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())
    assert (tok_cfg["eos_token"], tok_cfg["bos_token"]) == ("</s>", "<s>")
    main(["import-hf", str(tmp_path / "hf"), str(tmp_path / "back")])

    ours, tok = load_policy(model_dir)
    back, tok_back = load_policy(tmp_path / "back")
    x = torch.tensor(tok.encode_batch(["Ava buys 3 packs of 12 pens. How many pens?"] * 2, add_bos=True))
    with torch.no_grad():
        a, b = ours(x), back(x)
    assert torch.equal(a, b) and (tok_back.eos_id, tok_back.bos_id) == (2, 1)
    transformers = pytest.importorskip("transformers", reason="transformers is not installed: the HF side of the "
                                                              "round trip is skipped")
    hf = transformers.OlmoForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, a, atol=1e-4, rtol=0)


def test_import_sources_and_their_errors(tmp_path, monkeypatch):
    from echochamber.hf import import_hf_folder, resolve_hf_source

    export_hf(random_model(tied=True), tmp_path / "no_tok")
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        import_hf_folder(tmp_path / "no_tok", tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="no such model folder"):
        resolve_hf_source(tmp_path / "missing")
    # A hub id: without huggingface_hub, or without the hub, the error names the id and what failed.
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(FileNotFoundError, match=r"rosieyzh/OLMo-1B-as_fm3_tg_omi2: not a local folder; .*huggingface_hub"):
        resolve_hf_source("rosieyzh/OLMo-1B-as_fm3_tg_omi2")
    monkeypatch.undo()
    hub = pytest.importorskip("huggingface_hub")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf_home" / "hub"))
    with pytest.raises(FileNotFoundError, match=r"rosieyzh/OLMo-1B-as_fm3_tg_omi2: not a local folder, and "
                                                r"downloading it from the hub failed"):
        resolve_hf_source("rosieyzh/OLMo-1B-as_fm3_tg_omi2")
