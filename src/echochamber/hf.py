"""Hugging Face `OlmoForCausalLM` interop: export our weights to an HF model folder and import one back.

The paper's authors released their checkpoints in this format, and HF tooling (transformers, vLLM) reads it.
Neither direction needs transformers: an HF folder is a config.json plus safetensors weights named

    model.embed_tokens.weight                      <-> wte.weight
    model.layers.N.self_attn.{q,k,v}_proj.weight   <-> blocks.N.attn.qkv.weight     (stacked [q; k; v] rows)
    model.layers.N.self_attn.o_proj.weight         <-> blocks.N.attn.proj.weight
    model.layers.N.mlp.{gate,up}_proj.weight       <-> blocks.N.mlp.gate_up.weight  (stacked [gate; up] rows)
    model.layers.N.mlp.down_proj.weight            <-> blocks.N.mlp.down.weight
    lm_head.weight                                 <-> lm_head.weight               (absent when tied)

Both use the same RoPE layout (rotate halves, not interleaved pairs), so no weight permutation is needed.

EOS and BOS always come from the tokenizer (tokenizer.Tokenizer: tokenizer_config.json, else the usual names),
never from config.json: the authors' OLMo configs carry eos_token_id 0, which is <unk> in the Llama-2 vocabulary
they trained with (their documents end with </s>, id 2).

The authors' released checkpoints (PAPER.md) are HF folders with the Llama-2 tokenizer beside the weights, so
`import_hf_folder` takes such a folder, or a hub id when huggingface_hub is installed and the hub is reachable.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import torch

from .model import PRESETS, ModelConfig, OLMo, from_state_dict
from .runio import atomic_write_bytes, atomic_write_json
from .tokenizer import Tokenizer

# Tokenizer files a model folder carries along (tokenizer_config.json names EOS / BOS; tokenizer.model is the
# SentencePiece original some tools want beside tokenizer.json).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model")


def to_hf_state_dict(model: OLMo) -> dict[str, torch.Tensor]:
    """Our parameters under HF OlmoForCausalLM names (fused matrices split), contiguous CPU tensors."""
    cfg = model.config
    out = {"model.embed_tokens.weight": model.wte.weight}
    for i, block in enumerate(model.blocks):
        p = f"model.layers.{i}."
        q, k, v = block.attn.qkv.weight.chunk(3, dim=0)
        gate, up = block.mlp.gate_up.weight.chunk(2, dim=0)
        out.update({p + "self_attn.q_proj.weight": q, p + "self_attn.k_proj.weight": k,
                    p + "self_attn.v_proj.weight": v, p + "self_attn.o_proj.weight": block.attn.proj.weight,
                    p + "mlp.gate_proj.weight": gate, p + "mlp.up_proj.weight": up,
                    p + "mlp.down_proj.weight": block.mlp.down.weight})
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = model.lm_head.weight
    return {k: v.detach().cpu().contiguous() for k, v in out.items()}


def from_hf_state_dict(state: dict[str, torch.Tensor], n_layers: int, tied: bool,
                       where: str) -> dict[str, torch.Tensor]:
    """HF OlmoForCausalLM weights -> our names (q/k/v and gate/up stacked). Unknown or missing keys are errors."""
    state = {k: v for k, v in state.items() if not k.endswith("rotary_emb.inv_freq")}  # old checkpoints kept it

    def take(name: str) -> torch.Tensor:
        if name not in state:
            raise ValueError(f"{where}: missing weight {name!r}")
        return state.pop(name)

    out = {"wte.weight": take("model.embed_tokens.weight")}
    for i in range(n_layers):
        p = f"model.layers.{i}."
        out[f"blocks.{i}.attn.qkv.weight"] = torch.cat(
            [take(p + f"self_attn.{n}_proj.weight") for n in ("q", "k", "v")], dim=0)
        out[f"blocks.{i}.attn.proj.weight"] = take(p + "self_attn.o_proj.weight")
        out[f"blocks.{i}.mlp.gate_up.weight"] = torch.cat(
            [take(p + "mlp.gate_proj.weight"), take(p + "mlp.up_proj.weight")], dim=0)
        out[f"blocks.{i}.mlp.down.weight"] = take(p + "mlp.down_proj.weight")
    head = state.pop("lm_head.weight", None)
    if not tied:
        if head is None:
            raise ValueError(f"{where}: missing weight 'lm_head.weight' (tie_word_embeddings is false)")
        out["lm_head.weight"] = head
    if state:
        raise ValueError(f"{where}: unexpected weights {sorted(state)[:5]} (not an OLMo-1 checkpoint?)")
    return out


def hf_config(cfg: ModelConfig, eos_token_id: int | None = None, pad_token_id: int | None = None,
              bos_token_id: int | None = None) -> dict:
    """The config.json of an HF OlmoForCausalLM with our shape. rope_theta is written both the transformers 4.x
    way (top-level) and the 5.x way (rope_parameters)."""
    return {
        "architectures": ["OlmoForCausalLM"],
        "model_type": "olmo",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.mlp_hidden,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_heads,
        "max_position_embeddings": cfg.max_seq_len,
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "clip_qkv": cfg.clip_qkv,
        "tie_word_embeddings": bool(cfg.tie_embeddings),
        "initializer_range": cfg.init_std,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "pad_token_id": pad_token_id,
        "use_cache": True,
        "torch_dtype": "float32",
    }


def export_hf(model: OLMo, out_dir: str | Path, tokenizer_path: str | Path | None = None, *,
              eos_token_id: int | None = None) -> None:
    """Write an HF OlmoForCausalLM folder: config.json, generation_config.json, model.safetensors, and with a
    tokenizer also tokenizer.json + tokenizer_config.json. EOS and BOS are the tokenizer's (echochamber's
    <|endoftext|>, Llama-2's </s> and <s>), or `eos_token_id` without a tokenizer; EOS doubles as the pad id
    (the paper's data has no padding token)."""
    from safetensors.torch import save as st_save

    out_dir = Path(out_dir)
    tok = Tokenizer.load(tokenizer_path) if tokenizer_path is not None else None
    if tok is not None:
        if eos_token_id is not None and eos_token_id != tok.eos_id:
            raise ValueError(f"eos_token_id {eos_token_id} contradicts {tokenizer_path}'s EOS "
                             f"{tok.eos_token!r} ({tok.eos_id})")
        eos_token_id = tok.eos_id
        if tok.vocab_size > model.config.vocab_size:
            raise ValueError(f"{tokenizer_path}: {tok.vocab_size} tokens, more than the model's vocab_size "
                             f"{model.config.vocab_size}")
    bos_token_id = tok.bos_id if tok else None
    atomic_write_bytes(out_dir / "model.safetensors", st_save(to_hf_state_dict(model), metadata={"format": "pt"}))
    atomic_write_json(out_dir / "config.json", hf_config(model.config, eos_token_id, eos_token_id, bos_token_id))
    atomic_write_json(out_dir / "generation_config.json",
                      {"eos_token_id": eos_token_id, "pad_token_id": eos_token_id, "bos_token_id": bos_token_id})
    if tok is not None:
        atomic_write_bytes(out_dir / "tokenizer.json", Path(_tokenizer_file(tokenizer_path)).read_bytes())
        atomic_write_json(out_dir / "tokenizer_config.json",
                          {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": tok.eos_token,
                           "bos_token": tok.bos_token, "pad_token": tok.eos_token,
                           "model_max_length": model.config.max_seq_len})


def _tokenizer_file(path: str | Path) -> Path:
    """A tokenizer path as Tokenizer.load reads it: a tokenizer.json, or the one inside a folder."""
    path = Path(path)
    return path / "tokenizer.json" if path.is_dir() else path


def _read_hf_weights(hf_dir: Path) -> dict[str, torch.Tensor]:
    """All tensors of an HF folder: model.safetensors, a sharded model.safetensors.index.json, or pytorch_model.bin."""
    from safetensors.torch import load_file

    single, index = hf_dir / "model.safetensors", hf_dir / "model.safetensors.index.json"
    pt = hf_dir / "pytorch_model.bin"
    if single.exists():
        return load_file(str(single))
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(load_file(str(hf_dir / shard)))
        return state
    if pt.exists():
        return torch.load(pt, map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{hf_dir}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin")


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_hf_source(source: str | Path) -> Path:
    """A local HF folder, or a hub id ("owner/name") downloaded with huggingface_hub (config, weights and
    tokenizer files only). Errors say which of the two failed and why."""
    path = Path(source)
    if path.exists() or not _HUB_ID.match(str(source)):
        if not path.is_dir():
            raise FileNotFoundError(f"{source}: no such model folder (and not a hub id of the form owner/name)")
        return path
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise FileNotFoundError(f"{source}: not a local folder; to download it from the hub install "
                                f"huggingface_hub (pip install -e '.[hub]')") from None
    try:
        return Path(snapshot_download(str(source), allow_patterns=["*.json", "*.safetensors", "pytorch_model.bin",
                                                                    "tokenizer.model"]))
    except Exception as e:  # offline, unknown repo, gated repo: the hub's own message says which
        raise FileNotFoundError(f"{source}: not a local folder, and downloading it from the hub failed: "
                                f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None


def import_hf_folder(source: str | Path, out_dir: str | Path) -> tuple[OLMo, Tokenizer]:
    """An HF OlmoForCausalLM folder or hub id (e.g. one of the authors' checkpoints) -> an echochamber model
    folder (weights, model config, the tokenizer files): what `rl`, `eval` and `sample` start from. The folder
    must carry its tokenizer: EOS and BOS are read from it."""
    hf_dir = resolve_hf_source(source)
    if not (hf_dir / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{hf_dir}: no tokenizer.json (import-hf needs the model's tokenizer: EOS and BOS "
                                f"come from it; the paper's models use meta-llama/Llama-2-7b-hf's)")
    tok = Tokenizer.load(hf_dir / "tokenizer.json")
    model = import_hf(hf_dir)
    if tok.vocab_size > model.config.vocab_size:
        raise ValueError(f"{hf_dir}: the tokenizer has {tok.vocab_size} tokens, the model only "
                         f"{model.config.vocab_size}")
    said = json.loads((hf_dir / "config.json").read_text()).get("eos_token_id")
    if said is not None and said != tok.eos_id:
        print(f"note: {hf_dir / 'config.json'} says eos_token_id {said}; using the tokenizer's EOS "
              f"{tok.eos_token!r} (id {tok.eos_id})", file=sys.stderr)
    out_dir = Path(out_dir)
    model.save(out_dir)
    for name in TOKENIZER_FILES:
        if (hf_dir / name).is_file():
            atomic_write_bytes(out_dir / name, (hf_dir / name).read_bytes())
    return model, tok


def import_hf(hf_dir: str | Path, device: str | torch.device = "cpu") -> OLMo:
    """Load an HF OlmoForCausalLM folder (e.g. the paper's released 150M / 1B checkpoints) as an fp32 OLMo.
    Only OLMo-1 shapes are accepted: no biases, silu, as many key/value heads as heads, plain RoPE."""
    hf_dir = Path(hf_dir)
    cfg_path = hf_dir / "config.json"
    if not cfg_path.exists():
        raise FileNotFoundError(f"{cfg_path}: missing (expected a Hugging Face model folder)")
    c = json.loads(cfg_path.read_text())
    where = str(cfg_path)
    if c.get("model_type") != "olmo":
        raise ValueError(f"{where}: model_type is {c.get('model_type')!r}, expected 'olmo' (OlmoForCausalLM)")
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
        if key not in c:
            raise ValueError(f"{where}: missing key {key!r}")
    heads = c["num_attention_heads"]
    checks = {"attention_bias": (c.get("attention_bias", False), False),
              "hidden_act": (c.get("hidden_act", "silu"), "silu"),
              "num_key_value_heads": (c.get("num_key_value_heads") or heads, heads)}
    rope = c.get("rope_parameters") or c.get("rope_scaling") or {}
    checks["rope type"] = (rope.get("rope_type", rope.get("type", "default")), "default")
    for key, (got, want) in checks.items():
        if got != want:
            raise ValueError(f"{where}: {key} = {got!r} is not supported (OLMo-1 uses {want!r})")
    theta = rope.get("rope_theta", c.get("rope_theta", 10000.0))
    shape = dict(d_model=c["hidden_size"], n_layers=c["num_hidden_layers"], n_heads=c["num_attention_heads"],
                 mlp_hidden=c["intermediate_size"], max_seq_len=c.get("max_position_embeddings", 2048),
                 tie_embeddings=bool(c.get("tie_word_embeddings", False)))
    # Name the preset when the shape is one of ours (so "olmo-150m" reads as such); otherwise "custom".
    preset = next((name for name, p in PRESETS.items() if p == shape), "custom")
    config = ModelConfig(preset=preset, rope_theta=float(theta), init_std=float(c.get("initializer_range", 0.02)),
                         clip_qkv=c.get("clip_qkv"), vocab_size=c["vocab_size"], **shape).resolve()
    state = from_hf_state_dict(_read_hf_weights(hf_dir), config.n_layers, config.tie_embeddings, str(hf_dir))
    return from_state_dict(config, state, str(hf_dir), device)
