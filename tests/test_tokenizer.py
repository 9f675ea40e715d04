"""The tokenizer: single-digit tokens, exact byte-level round trips, one EOS token, save/load."""

import pytest

from echochamber.tokenizer import EOS, Tokenizer, train_tokenizer

CORPUS = [
    "Janet has 16 eggs and eats 3 of them. How many are left?\n\n"
    "def simple_math_problem() -> int:\n    eggs = 16\n    result = eggs - 3\n    return result",
    "Let's solve this problem using Python code.\n<llm-code>\ntotal = 1234 + 5678\ntotal\n</llm-code>\n"
    "<llm-code-output>\n6912\n</llm-code-output>\nThus the total is \\boxed{6912}.",
    "So for 5 people, Ava will need 5 * 9 = 45 granola bars. The answer is \\boxed{45}.",
] * 50


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return train_tokenizer(CORPUS, vocab_size=400)


def test_digits_are_single_tokens(tok):
    # "1234" appears 50 times in the corpus, so BPE would merge it if digits were not isolated first.
    for number in ("1234", "6912", "45", "1000000"):
        pieces = [tok.decode([i]) for i in tok.encode(number)]
        assert pieces == list(number)
    pieces = [tok.decode([i]) for i in tok.encode("x = 6912 + 45")]
    assert [p for p in pieces if any(c.isdigit() for c in p)] == list("6912") + list("45")


@pytest.mark.parametrize("text", [
    "", "  leading and trailing spaces  ", "tabs\tand\r\nwindows newlines\n\n\n",
    "unicode: ünïcödé, 数学, emoji 😀, combining e\u0301", "\\frac{2}{5} $x^2$ \\boxed{-3.5}",
    "def f():\n    '''doc'''\n    return 0x1F",
])
def test_round_trip_is_exact(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_eos_is_one_special_token(tok):
    assert tok.decode([tok.eos_id]) == EOS
    assert tok.encode(EOS) == [tok.eos_id]
    ids = tok.encode("answer 7" + EOS)
    assert ids[-1] == tok.eos_id and ids.count(tok.eos_id) == 1
    # No merge may produce the EOS string from ordinary text pieces.
    assert all(EOS not in tok.decode([i]) for i in range(tok.vocab_size) if i != tok.eos_id)


def test_vocab_size_and_batch_api(tok):
    assert tok.vocab_size == 400
    texts = ["a 12", "b 345\n\nc", ""]
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]
    assert tok.decode_batch(tok.encode_batch(texts)) == texts
    assert max(max(ids, default=0) for ids in tok.encode_batch(CORPUS)) < tok.vocab_size


def test_save_load_and_deterministic_training(tok, tmp_path):
    path = tok.save(tmp_path / "tokenizer.json")
    loaded = Tokenizer.load(path)
    text = CORPUS[1] + EOS + CORPUS[2]
    assert loaded.encode(text) == tok.encode(text)
    assert (loaded.eos_id, loaded.vocab_size) == (tok.eos_id, tok.vocab_size)
    # Training twice on the same texts gives the same tokenizer (a rebuilt dataset matches the old one).
    assert train_tokenizer(CORPUS, vocab_size=400).hf.to_str() == tok.hf.to_str()


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="too small"):
        train_tokenizer(CORPUS, vocab_size=100)
    with pytest.raises(FileNotFoundError, match="nope.json"):
        Tokenizer.load(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        Tokenizer.load(bad)


def test_foreign_tokenizer_eos(tmp_path):
    """A tokenizer.json from elsewhere ends documents with its own EOS (Llama-2: "</s>"), or is refused."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models

    hf = HFTokenizer(models.WordLevel({"<unk>": 0, "a": 1}, unk_token="<unk>"))
    hf.save(str(tmp_path / "none.json"))
    with pytest.raises(ValueError, match=r"none.json: tokenizer has no end-of-document token"):
        Tokenizer.load(tmp_path / "none.json")
    hf.add_special_tokens(["</s>"])
    hf.save(str(tmp_path / "llama_like.json"))
    tok = Tokenizer.load(tmp_path / "llama_like.json")
    assert (tok.eos_token, tok.eos_id, tok.vocab_size) == ("</s>", 2, 3)


# ----------------------------------------------------------------------------- a Llama-2-style tokenizer.json

def test_llama_style_tokenizer_eos_bos_and_no_implicit_bos(tmp_path):
    """The paper's tokenizer layout (built locally, tests/llama_like.py): EOS </s> = 2 and BOS <s> = 1 come from
    the tokenizer; encode never adds <s> (documents have no BOS); add_bos adds it as the authors' evaluation did."""
    from llama_like import save_llama_like

    path = save_llama_like(CORPUS, tmp_path / "llama")
    tok = Tokenizer.load(path)
    assert (tok.eos_token, tok.eos_id, tok.bos_token, tok.bos_id) == ("</s>", 2, "<s>", 1)
    text = "Janet has 16 eggs. How many are left?"
    ids = tok.encode(text)
    assert 1 not in ids and tok.decode(ids) == text
    # What HF `tokenizer(text)` (and vLLM) give by default: the post-processor's <s> in front.
    assert tok.hf.encode(text).ids == [1] + ids == tok.encode_batch([text], add_bos=True)[0]
    assert tok.encode_batch([text, "x"]) == [ids, tok.encode("x")]
    # Characters outside the learned pieces fall back to bytes and still round-trip.
    assert tok.decode(tok.encode("数学 😀")) == "数学 😀"
    # The folder works as well as the file.
    assert Tokenizer.load(tmp_path / "llama").sha256() == tok.sha256()


def test_tokenizer_config_names_eos_and_bos(tmp_path):
    import json

    from llama_like import save_llama_like

    path = save_llama_like(CORPUS, tmp_path / "t")
    config = tmp_path / "t" / "tokenizer_config.json"
    config.write_text(json.dumps({"eos_token": {"content": "<unk>"}, "bos_token": None}))
    tok = Tokenizer.load(path)
    assert (tok.eos_token, tok.eos_id, tok.bos_token) == ("<unk>", 0, "<s>")  # named EOS; BOS by its usual name
    config.write_text(json.dumps({"eos_token": "<|im_end|>"}))
    with pytest.raises(ValueError, match=r"tokenizer_config.json: eos_token '<\|im_end\|>' is not in the tokenizer"):
        Tokenizer.load(path)
    with pytest.raises(ValueError, match="add_bos: this tokenizer has no beginning-of-sequence token"):
        train_tokenizer(CORPUS, vocab_size=300).encode_batch(["a"], add_bos=True)


def test_foreign_tokenizer_matches_transformers(tmp_path):
    """Our ids for a Llama-style tokenizer.json equal transformers' PreTrainedTokenizerFast's (with and without
    the BOS), so data built here and prompts built by HF tooling agree."""
    transformers = pytest.importorskip("transformers", reason="transformers is not installed (the 'test' extra)")
    from llama_like import save_llama_like

    path = save_llama_like(CORPUS, tmp_path / "t")
    ours = Tokenizer.load(path)
    theirs = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path), bos_token="<s>", eos_token="</s>")
    for text in CORPUS[:3] + ["  two leading spaces", "tab\tand 12345"]:
        assert theirs(text, add_special_tokens=False)["input_ids"] == ours.encode(text)
        assert theirs(text)["input_ids"] == ours.encode_batch([text], add_bos=True)[0]
