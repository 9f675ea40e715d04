"""A small tokenizer laid out like Llama-2's tokenizer.json (the paper's), built locally: no download.

What it shares with meta-llama/Llama-2-7b-hf's tokenizer.json: ids 0/1/2 are `<unk>`, `<s>`, `</s>`; the same
normaliser (prepend "▁", spaces become "▁"), no pre-tokenizer, byte fallback (`<0x..>` tokens) for characters
outside the vocabulary, the same decoder chain, and a post-processor that prepends `<s>` when special tokens are
requested (what vLLM and HF `tokenizer(text)` do by default, and echochamber's `encode` does not). What it does
not share: the 32000 learned pieces.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers, trainers

SPECIAL = ["<unk>", "<s>", "</s>"]
BYTES = [f"<0x{i:02X}>" for i in range(256)]


def llama_like_tokenizer(texts: list[str], vocab_size: int = 600) -> Tokenizer:
    # Train on words (Metaspace splits at "▁"), so no piece spans two words, as in SentencePiece.
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL + BYTES, show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    # Then the layout of Llama-2's tokenizer.json around the learned model.
    spec = json.loads(tok.to_str())
    spec["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}
    spec["pre_tokenizer"] = None
    spec["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"}, {"type": "Fuse"},
        {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
    spec["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                 {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}}
    tok = Tokenizer.from_str(json.dumps(spec))
    assert [tok.token_to_id(t) for t in SPECIAL] == [0, 1, 2]
    return tok


def save_llama_like(texts: list[str], folder: Path, vocab_size: int = 600) -> Path:
    """tokenizer.json + tokenizer_config.json in `folder`, as transformers' save_pretrained writes them."""
    folder.mkdir(parents=True, exist_ok=True)
    llama_like_tokenizer(texts, vocab_size).save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "add_bos_token": True, "add_eos_token": False}))
    return folder / "tokenizer.json"
