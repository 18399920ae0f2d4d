#!/usr/bin/env python3
"""Writes the tokenizer golden fixtures for Tests/EngineTests/TokenizerTests.swift.

The independent reference is Hugging Face's `tokenizers` library (Rust). Chat-template
goldens are rendered by `jinja2` from the template stored in the SmolLM2 GGUF.

    python3 -m venv ~/.cache/nb-venv-tok
    ~/.cache/nb-venv-tok/bin/pip install tokenizers gguf numpy jinja2
    ~/.cache/nb-venv-tok/bin/python Tests/EngineTests/Fixtures/tokenizer/make_tokenizer_goldens.py

Inputs (downloaded by `make setup`):
    ~/.cache/nb/models/gpt2-tokenizer/{encoder.json,vocab.bpe}
    ~/.cache/nb/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf

Outputs, beside this script: gpt2_goldens.json, smollm2_goldens.json, chat_template_goldens.json.
"""

import hashlib
import json
import os
import sys

import gguf
import jinja2
import tokenizers
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = os.path.expanduser("~/.cache/nb/models")
GPT2_DIR = os.path.join(MODELS, "gpt2-tokenizer")
SMOLLM2_GGUF = os.path.join(MODELS, "smollm2-135m-instruct", "SmolLM2-135M-Instruct.Q4_1.gguf")

# At least 120 varied strings. Both tokenizers encode all of them.
STRINGS = [
    # empty and plain English
    "",
    "Hello world",
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "What is FHE?",
    "What is fully homomorphic encryption?",
    "FHE, or fully homomorphic encryption, is a form of encryption that lets a computer run arbitrary computations directly on encrypted data.",
    "The capital of Italy is",
    "hello",
    "HELLO",
    "HeLLo WoRLD",
    "supercalifragilisticexpialidocious",
    "antidisestablishmentarianism and pneumonoultramicroscopicsilicovolcanoconiosis",
    "A",
    "a b c d e f g",
    "Mr. Smith went to Washington D.C. on Jan. 5th.",
    # contractions (case-sensitive, ASCII apostrophe only)
    "I'm here, you're there, we'll see, they've gone, she'd know, it's fine, don't.",
    "IT'S LOUD, DON'T SHOUT, WE'LL SEE",
    "'s 't 're 've 'm 'll 'd",
    "O'Neil's rock 'n' roll",
    "''s and '''",
    "'",
    "x'Y",
    "can't won't shouldn't",
    "\u2018curly\u2019 quotes \u201clike these\u201d it\u2019s",
    # accents, scripts
    "caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00c5ngstr\u00f6m",
    "S\u00e3o Paulo, M\u00fcnchen, Z\u00fcrich, Krak\u00f3w",
    "e\u0301 (e + combining acute) vs \u00e9",
    "Ti\u1ebfng Vi\u1ec7t c\u00f3 d\u1ea5u",
    "\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440!",
    "\u039a\u03b1\u03bb\u03b7\u03bc\u03ad\u03c1\u03b1 \u03ba\u03cc\u03c3\u03bc\u03b5",
    "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645",
    "\u05e9\u05dc\u05d5\u05dd \u05e2\u05d5\u05dc\u05dd",
    "\u0928\u092e\u0938\u094d\u0924\u0947 \u0926\u0941\u0928\u093f\u092f\u093e",
    "\u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35\u0e04\u0e23\u0e31\u0e1a",
    "\u00dfe \u1e9e \u0130stanbul \u0131",
    # CJK
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8",
    "\u4e2d\u6587\u6d4b\u8bd5\uff0c\u4f60\u597d\u4e16\u754c\u3002",
    "\ud55c\uad6d\uc5b4 \ud14d\uc2a4\ud2b8",
    "\u6f22\u5b57 and English mixed \u6df7\u5408",
    "\u4e00\u4e8c\u4e09 \u5341\u516b",
    # emoji, ZWJ sequences, variation selectors, skin tones, flags
    "\U0001f600",
    "I love \U0001f355 and \U0001f680!",
    "\U0001f44d\U0001f3fd",
    "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466 family",
    "\U0001f3f3\ufe0f\u200d\U0001f308",
    "\u2764\ufe0f\u2764\ufe0f\u2764\ufe0f",
    "\U0001f1eb\U0001f1f7 \U0001f1ef\U0001f1f5",
    "\U0001f9d1\u200d\U0001f4bb coding",
    "a\u200bb (zero width space)",
    # digits and numbers
    "123",
    "1234567890",
    "12345678901234567890123456789",
    "3.14159265358979",
    "1,000,000 and 2.5e-10",
    "2024-01-01T12:34:56Z",
    "x  123",
    "x 123",
    "a 1",
    "abc123def",
    "v1.2.3-rc4",
    "Room 101, floor 7",
    "\u0663\u0664\u0665 (Arabic-Indic)",
    "x\u00b2 + y\u00b3 = z\u00b2, \u00bd + \u00bc",
    "\u216b o'clock, \u2460\u2461\u2462",
    "\uff11\uff12\uff13 fullwidth",
    "  42  ",
    "$1,234.56 (USD) -> \u20ac1.100,00",
    # whitespace runs, tabs, newlines, trailing spaces
    " ",
    "  ",
    "     ",
    "\t",
    "\n",
    "\n\n\n",
    "  leading spaces",
    "trailing spaces  ",
    "trailing space ",
    "a  b",
    "a   b",
    "a\tb",
    "a\t\tb",
    "a \tb",
    "a\t b",
    "a\nb",
    "a\n\nb",
    "a \n b",
    "line1\r\nline2\r\n",
    " \n x",
    "x\n  y",
    "x \t y",
    "end with newline\n",
    "end with spaces and newline  \n",
    "a\u00a0b (no-break space)",
    "a\u3000b (ideographic space)",
    "a\u2028b\u2029c",
    "a\u0085b",
    "\u000b\u000c vertical tab and form feed",
    "\u00a0\u00a0x",
    "  \t  \n  ",
    # code
    "def f(x):\n    return x**2\n",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    "console.log('hi'); // comment",
    '<div class="a">Text</div>',
    "#include <stdio.h>\nint main(void) { return 0; }",
    '{"key": [1, 2, 3], "nested": {"a": null}}',
    "SELECT * FROM t WHERE id=42;",
    "if x == 1:\n\tprint(\"tab\")\n",
    "let xs = [1, 2, 3].map { $0 * 2 }",
    "    indented four\n        indented eight",
    "path/to/file_name.swift:12:5: error: expected ')'",
    "https://example.com/a?b=c&d=e#frag",
    "user@example.org",
    "^[a-z]+\\d*$",
    "camelCaseIdentifier snake_case_identifier SCREAMING_CASE",
    # punctuation runs
    "!!!???",
    "...",
    "\u2014\u2013-",
    "\u00ab\u00bb\u2039\u203a",
    "@#$%^&*()",
    "Wait... what?!",
    "-- -- --",
    "*** bold *** __under__",
    "(parenthesis) [brackets] {braces}",
    # special-token text
    "<|endoftext|>",
    "Hello<|endoftext|>World",
    "<|endoftext|><|endoftext|>",
    "text <|endoftext|> text",
    "<|endoftext|",
    "<|im_start|>user\nHi<|im_end|>\n",
    "<|im_start|>assistant\n",
    "<|im_end|>",
    "<|im_start|><|im_end|>",
    "< |im_start| >",
    "<filename>main.py<file_sep>",
    # control characters and odd bytes
    "\u0000",
    "a\u001fb",
    "a\u007fb",
    "\u00ad soft hyphen",
    "\ufffd replacement char",
    # long and repeated
    "=" * 80,
    "a" * 300,
    " " * 50 + "x",
    "ab" * 100,
    "1" * 64,
    "\U0001f600" * 20,
]

# SmolLM2's pre-tokenizer in llama.cpp (`smollm`) and in the `tokenizers` reference
# (Sequence[Digits(individual_digits), ByteLevel]) both isolate every \p{N} scalar before
# the GPT-2 split; checked by hand here so that a reference regression cannot slip into
# the fixtures (transformers' GGUF converter gets "x  123" wrong: REFERENCE.md).
HAND_CHECKED_SMOLLM2 = {
    "x  123": ["x", "\u0120\u0120", "1", "2", "3"],
    "a 1": ["a", "\u0120", "1"],
    "v1.2": ["v", "1", ".", "2"],
    "x\u00b2": ["x", "\u00c2\u00b2"],
}
HAND_CHECKED_GPT2 = {
    "x  123": ["x", "\u0120", "\u0120123"],
    "a  b": ["a", "\u0120", "\u0120b"],
    "trailing spaces  ": ["trailing", "\u0120spaces", "\u0120\u0120"],
    "a\t\tb": ["a", "\u0109", "\u0109", "b"],
    "don't DON'T": ["don", "'t", "\u0120DON", "'", "T"],
}


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def build(vocab, merges, specials, digits):
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if digits:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    return tok


def gpt2_tokenizer():
    with open(os.path.join(GPT2_DIR, "encoder.json"), encoding="utf-8") as f:
        vocab = json.load(f)
    with open(os.path.join(GPT2_DIR, "vocab.bpe"), encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [tuple(line.split(" ")) for line in lines[1:] if line]
    assert len(vocab) == 50257 and len(merges) == 50000
    return build(vocab, merges, ["<|endoftext|>"], digits=False)


def gguf_field(reader, key):
    return reader.fields[key].contents()


def smollm2_tokenizer():
    reader = gguf.GGUFReader(SMOLLM2_GGUF)
    tokens = gguf_field(reader, "tokenizer.ggml.tokens")
    types = gguf_field(reader, "tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ")) for m in gguf_field(reader, "tokenizer.ggml.merges")]
    assert gguf_field(reader, "tokenizer.ggml.pre") == "smollm"
    vocab = {t: i for i, t in enumerate(tokens)}
    assert len(vocab) == len(tokens) == 49152 and len(merges) == 48900
    specials = [t for t, ty in zip(tokens, types) if ty in (3, 4)]
    template = gguf_field(reader, "tokenizer.chat_template")
    return build(vocab, merges, specials, digits=True), template


def check_by_hand(tok, expected, name):
    """Compares the reference's pre-tokenizer pieces with pieces worked out by hand."""
    for text, pieces in expected.items():
        got = [piece for piece, _ in tok.pre_tokenizer.pre_tokenize_str(text)]
        if got != pieces:
            sys.exit(f"{name}: reference gives {got} for {text!r}, expected {pieces} (see REFERENCE.md)")


def cases(tok):
    out = []
    for text in STRINGS:
        ids = tok.encode(text).ids
        assert tok.decode(ids, skip_special_tokens=False) == text, text
        out.append({"text": text, "ids": ids})
    return out


def decode_cases(tok):
    # Partial UTF-8 sequences: the replacement happens once, over all bytes joined.
    out = []
    for text in ["\U0001f600 ok", "caf\u00e9", "\u65e5\u672c", "\U0001f468\u200d\U0001f469\u200d\U0001f467"]:
        ids = tok.encode(text).ids
        for sub in (ids[:-1], ids[1:], ids[::-1]):
            out.append({"ids": sub, "text": tok.decode(sub, skip_special_tokens=False)})
    return out


def write(name, payload):
    path = os.path.join(HERE, name)
    with open(path, "w", encoding="ascii") as f:
        # One case per line keeps diffs readable.
        head = {k: v for k, v in payload.items() if k not in ("cases", "decode_cases", "conversations")}
        f.write("{\n")
        for k, v in head.items():
            f.write(f"  {json.dumps(k)}: {json.dumps(v, ensure_ascii=True)},\n")
        lists = [(k, payload[k]) for k in ("cases", "decode_cases", "conversations") if k in payload]
        for n, (k, items) in enumerate(lists):
            f.write(f"  {json.dumps(k)}: [\n")
            f.write(",\n".join("    " + json.dumps(item, ensure_ascii=True) for item in items))
            f.write("\n  ]" + ("," if n + 1 < len(lists) else "") + "\n")
        f.write("}\n")
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


def main():
    assert len(STRINGS) >= 120 and len(set(STRINGS)) == len(STRINGS), len(STRINGS)
    reference = f"tokenizers {tokenizers.__version__} (Hugging Face, Rust)"

    gpt2 = gpt2_tokenizer()
    check_by_hand(gpt2, HAND_CHECKED_GPT2, "gpt2")
    write("gpt2_goldens.json", {
        "generator": "make_tokenizer_goldens.py",
        "reference": reference,
        "tokenizer": "GPT-2: encoder.json + vocab.bpe, ByteLevel pre-tokenizer, <|endoftext|> special",
        "sha256": {
            "encoder.json": sha256(os.path.join(GPT2_DIR, "encoder.json")),
            "vocab.bpe": sha256(os.path.join(GPT2_DIR, "vocab.bpe")),
        },
        "cases": cases(gpt2),
        "decode_cases": decode_cases(gpt2),
    })

    smollm2, template = smollm2_tokenizer()
    check_by_hand(smollm2, HAND_CHECKED_SMOLLM2, "smollm2")
    write("smollm2_goldens.json", {
        "generator": "make_tokenizer_goldens.py",
        "reference": reference,
        "tokenizer": "SmolLM2-135M-Instruct GGUF vocabulary, Sequence[Digits(individual_digits), ByteLevel], "
                     "token types 3 and 4 special",
        "sha256": {"SmolLM2-135M-Instruct.Q4_1.gguf": sha256(SMOLLM2_GGUF)},
        "cases": cases(smollm2),
        "decode_cases": decode_cases(smollm2),
    })

    conversations = [
        ([{"role": "user", "content": "What is FHE?"}], True),
        ([{"role": "system", "content": "You are a terse assistant."},
          {"role": "user", "content": "Name a prime."},
          {"role": "assistant", "content": "7"},
          {"role": "user", "content": "Another  one,\nplease. \U0001f642"}], True),
        ([{"role": "user", "content": "Hi"},
          {"role": "assistant", "content": "Hello! How can I help?"}], False),
        ([], True),
    ]
    rendered = []
    jinja = jinja2.Environment().from_string(template)
    for messages, add in conversations:
        text = jinja.render(messages=messages, add_generation_prompt=add)
        rendered.append({"messages": messages, "add_generation_prompt": add, "rendered": text,
                         "ids": smollm2.encode(text).ids})
    write("chat_template_goldens.json", {
        "generator": "make_tokenizer_goldens.py",
        "reference": f"jinja2 {jinja2.__version__} rendering tokenizer.chat_template of the SmolLM2 GGUF; "
                     f"ids from {reference}",
        "template": template,
        "conversations": rendered,
    })


if __name__ == "__main__":
    main()
