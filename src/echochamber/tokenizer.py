"""Byte-level BPE tokenizer with single-digit tokens, trained on the pretraining mixture.

The paper used the Llama-2 tokenizer (32000 tokens), which also splits numbers into single digits. Here the
tokenizer is trained on the mixture itself with a small vocabulary (512-2048 on a laptop), keeping the two
properties that matter for arithmetic and exact grading:
  - every digit is its own token (a `Digits(individual_digits=True)` pre-tokenizer runs before byte-level
    splitting, so BPE can never merge "12" into one token);
  - byte-level: all 256 bytes are in the base alphabet and there is no normaliser, so decode(encode(s)) == s
    for every string, including the model's own outputs that the grader parses.
The end-of-document token `<|endoftext|>` is a special token: one id, never produced by merges.

A tokenizer.json made elsewhere works too (`data.tokenizer`; the paper's is Llama-2's, vocab 32000): its EOS is
found among the usual names ("</s>" for Llama-2) and so is its BOS ("<s>"), which echochamber's own tokenizer
does not have. Documents never get a BOS (PAPER.md), but the authors' evaluation fed prompts through the Llama-2
tokenizer's defaults, which prepend "<s>": `Tokenizer.bos_id` is what `eval.add_bos` prepends to reproduce it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable, Sequence

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from .runio import atomic_write_text

EOS = "<|endoftext|>"
# A tokenizer.json made elsewhere may end documents with another token (Llama-2, the paper's: "</s>").
EOS_ALTERNATIVES = (EOS, "</s>", "<|end_of_text|>", "<eos>")
# Beginning-of-sequence tokens of tokenizers made elsewhere (Llama-2: "<s>", id 1); echochamber's has none.
BOS_ALTERNATIVES = ("<s>", "<|begin_of_text|>", "<bos>")


class Tokenizer:
    """A thin wrapper over `tokenizers.Tokenizer` exposing ids as plain lists and the EOS (and BOS) ids.

    EOS / BOS are the tokens named by `eos_token` / `bos_token` (Tokenizer.load reads them from a
    tokenizer_config.json beside the file, as transformers writes it), else the first of EOS_ALTERNATIVES /
    BOS_ALTERNATIVES in the vocabulary. A model's config.json is never asked: the paper's OLMo configs say
    eos_token_id 0, which in the Llama-2 vocabulary is <unk>; its documents end with </s> (id 2)."""

    def __init__(self, hf: HFTokenizer, eos_token: str | None = None, bos_token: str | None = None):
        self.hf = hf
        for name, token in (("eos_token", eos_token), ("bos_token", bos_token)):
            if token is not None and hf.token_to_id(token) is None:
                raise ValueError(f"{name} {token!r} is not in the tokenizer's vocabulary")
        found = [eos_token] if eos_token else [t for t in EOS_ALTERNATIVES if hf.token_to_id(t) is not None]
        if not found:
            raise ValueError(f"tokenizer has no end-of-document token (one of {EOS_ALTERNATIVES})")
        self.eos_token: str = found[0]
        self.eos_id: int = hf.token_to_id(found[0])
        bos = [bos_token] if bos_token else [t for t in BOS_ALTERNATIVES if hf.token_to_id(t) is not None]
        self.bos_token: str | None = bos[0] if bos else None
        self.bos_id: int | None = hf.token_to_id(bos[0]) if bos else None  # None: this tokenizer has no BOS
        self.vocab_size: int = hf.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str], add_bos: bool = False) -> list[list[int]]:
        """Encode many texts; the Rust side spreads the batch over all cores. add_bos prepends BOS (`eval.add_bos`:
        the authors' evaluation fed prompts to vLLM, whose Llama-2 tokenizer prepends <s>)."""
        ids = [e.ids for e in self.hf.encode_batch(list(texts), add_special_tokens=False)]
        if not add_bos:
            return ids
        if self.bos_id is None:
            raise ValueError(f"add_bos: this tokenizer has no beginning-of-sequence token (none of "
                             f"{BOS_ALTERNATIVES}, and no bos_token in a tokenizer_config.json)")
        return [[self.bos_id] + x for x in ids]

    def decode(self, ids: Sequence[int]) -> str:
        # skip_special_tokens=False: a decoded training row shows its EOS markers where documents end.
        return self.hf.decode(list(ids), skip_special_tokens=False)

    def decode_batch(self, batch: Sequence[Sequence[int]]) -> list[str]:
        return self.hf.decode_batch([list(ids) for ids in batch], skip_special_tokens=False)

    def save(self, path: str | Path) -> Path:
        """Write tokenizer.json atomically (the format HF transformers' PreTrainedTokenizerFast reads)."""
        return atomic_write_text(path, self.hf.to_str(pretty=True))

    def sha256(self) -> str:
        """A fingerprint of everything that decides the ids (vocabulary, merges, pre-tokenizer, normaliser,
        added tokens) and of the EOS that ends documents: the token caches of data.py are keyed by it."""
        return hashlib.sha256(f"{self.hf.to_str()}\neos={self.eos_id}".encode()).hexdigest()

    @classmethod
    def load(cls, path: str | Path, what: str = "tokenizer file") -> "Tokenizer":
        """Read a tokenizer.json (or the tokenizer.json inside a folder). `what` names the setting the path
        came from in errors (e.g. "data.tokenizer"). A tokenizer_config.json beside it names EOS and BOS."""
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"{what} {path} not found")
        try:
            hf = HFTokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception on malformed JSON
            raise ValueError(f"{path}: not a valid tokenizer.json ({e})") from None
        special = {}
        config = path.parent / "tokenizer_config.json"
        if config.is_file():
            try:
                c = json.loads(config.read_text())
            except json.JSONDecodeError as e:
                raise ValueError(f"{config}: not valid JSON ({e})") from None
            for key in ("eos_token", "bos_token"):
                value = c.get(key)
                special[key] = value.get("content") if isinstance(value, dict) else value
        try:
            return cls(hf, **special)
        except ValueError as e:
            raise ValueError(f"{config if special else path}: {e}") from None


def _empty_tokenizer() -> HFTokenizer:
    """BPE with the echochamber pre-tokenizer and decoder, no merges yet."""
    tok = HFTokenizer(models.BPE())
    # Digits first: "1234" -> "1","2","3","4" before the GPT-2 regex and byte mapping see it.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    return tok


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Train a byte-level BPE of `vocab_size` tokens (256 bytes + EOS + merges) on `texts`."""
    n_base = len(pre_tokenizers.ByteLevel.alphabet()) + 1
    if vocab_size < n_base:
        raise ValueError(f"vocab_size {vocab_size} is too small: byte-level BPE needs at least {n_base} "
                         f"(256 bytes + {EOS})")
    tok = _empty_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOS],
        # All 256 byte symbols from the start, whether or not the corpus has them: any text stays encodable.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return Tokenizer(tok)
