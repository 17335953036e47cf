#!/usr/bin/env python3
"""bpe_oracle.py: tiktoken's GPT-2 encoding, from glia's local ranks file, as
the oracle for glia's C tokenizer (host/io/bpe.c).

    python3 tools/bpe_oracle.py --ids FILE       token ids of FILE, one per line
    python3 tools/bpe_oracle.py --fixtures DIR   write DIR/bpe_*.ids (and bpe_torture.txt)
    python3 tools/bpe_oracle.py --bench FILE     tiktoken's encoding time for FILE (1 thread, median of 5)

The encoding is built from $GLIA_DATA (else $XDG_CACHE_HOME/glia, else
~/.cache/glia)/gpt2.tiktoken, which tools/fetch_gpt2_ranks.sh provides:
nothing is downloaded. Text that is not valid UTF-8 is encoded as glia
defines it: each valid run as tiktoken's encode_ordinary, each byte of no
valid character as its single-byte token (Python's strict UTF-8 decoder
decides validity, independently of glia's C check).

Exit status: 0 done, 77 tiktoken is not installed (tests skip), 2 bad input.
"""
import argparse
import os
import sys
import time

GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def ranks_path():
    if os.environ.get("GLIA_DATA"):
        d = os.environ["GLIA_DATA"]
    elif os.environ.get("XDG_CACHE_HOME", "").startswith("/"):
        d = os.path.join(os.environ["XDG_CACHE_HOME"], "glia")
    else:
        d = os.path.join(os.path.expanduser("~"), ".cache", "glia")
    return os.path.join(d, "gpt2.tiktoken")


def load():
    try:
        import tiktoken
        from tiktoken.load import load_tiktoken_bpe
    except ImportError:
        print("bpe_oracle.py: tiktoken is not installed (pip install tiktoken)", file=sys.stderr)
        sys.exit(77)
    path = ranks_path()
    if not os.path.exists(path):
        print(f"bpe_oracle.py: {path} is missing; bash tools/fetch_gpt2_ranks.sh provides it", file=sys.stderr)
        sys.exit(2)
    ranks = load_tiktoken_bpe(path)
    return tiktoken.Encoding(name="gpt2_local", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": 50256}), ranks


def encode(enc, ranks, data):
    """glia's definition on bytes: valid UTF-8 runs through tiktoken, other bytes one token each."""
    s = data.decode("utf-8", errors="surrogateescape")  # each invalid byte -> one lone surrogate
    out, run = [], []
    for ch in s:
        if 0xDC80 <= ord(ch) <= 0xDCFF:
            if run:
                out += enc.encode_ordinary("".join(run))
                run = []
            out.append(ranks[bytes([ord(ch) - 0xDC00])])
        else:
            run.append(ch)
    if run:
        out += enc.encode_ordinary("".join(run))
    return out


def torture():
    """Mixed scripts, emoji, combining marks, control bytes, invalid UTF-8,
    long runs of spaces and digits, contractions, every kind of space."""
    parts = [
        "Hello, world! It's we'll they've I'm you'd she'LL DON'T 'tis\n",
        "Ελληνικά Русский текст עִבְרִית العربية हिन्दी 中文字符 日本語のテキスト 한국어\n",
        "emoji: 👩‍👩‍👧‍👦 🇫🇷🇯🇵 👍🏽 ❤️ 🧑🏿‍💻 😀😃😄\n",
        "combining: e\u0301 a\u0308\u0323 Z\u0351\u0324\u0355\u033a\u0318 \u1100\u1161\u11a8 n\u0303o\u0303\n",
        "control: \x00\x01\x07\x08\x1b[31mred\x1b[0m\x7f \x1c\x1d\x1e\x1f\x85 \u200b\ufeff\u2028\u2029\n",
        "spaces:\u00a0\u1680\u2000\u2003\u200a\u202f\u205f\u3000\u180e|\t\t \v\f\r\n",
        " " * 37 + "x" + " " * 64 + "\n" + "\t \t  \n\n\n   \n",
        "digits: " + "1234567890" * 13 + " 3.14159 1,000,000 ١٢٣ ४२ Ⅻ ½ ²\n",
        "mixed: abc123def 42nd 3rd-party e-mail foo_bar x+y=z <|endoftext|> @#$%^&*()\n",
        "ﬁ ﬀ ǅ ẞ ß İ ı Ω K Å\U0001d400\U0001d7d8 \U00010348 \U0001f600\U0010fffd\n",
        "!!!!!!!!!!????......------______ ''''''' \"quoted\" ``back``\n",
    ]
    data = "".join(parts).encode("utf-8")
    bad = [b"\xff", b"\xfe\xfe", b"\xc0\xaf", b"\xe0\x80\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80",
           b"\xe2\x82", b"\x80\x80abc", b"\xf0\x9f\x98", b"caf\xe9 ", b"  \xff  x"]
    return data + b"invalid:" + b" | ".join(bad) + b"\nend\xc3"


def first_lines(data, limit):
    """The first lines of data, up to about limit bytes, cut after a newline."""
    cut = data.rfind(b"\n", 0, limit)
    return data[:cut + 1]


def main():
    ap = argparse.ArgumentParser(prog="bpe_oracle.py")
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--ids", metavar="FILE")
    g.add_argument("--fixtures", metavar="DIR")
    g.add_argument("--bench", metavar="FILE")
    ap.add_argument("--kjv", metavar="FILE", help="KJV text (--fixtures)")
    ap.add_argument("--shakespeare", metavar="FILE", help="Tiny Shakespeare text (--fixtures)")
    a = ap.parse_args()
    enc, ranks = load()
    if a.ids:
        with open(a.ids, "rb") as f:
            data = f.read()
        sys.stdout.write("".join(f"{t}\n" for t in encode(enc, ranks, data)))
    elif a.bench:
        with open(a.bench, "rb") as f:
            data = f.read()
        text = data.decode("utf-8")
        n = len(enc.encode_ordinary(text))  # warm-up
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            enc.encode_ordinary(text)
            times.append(time.perf_counter() - t0)
        med = sorted(times)[2]
        print(f"tiktoken {tiktoken_version()}: {len(data)} bytes, {n} tokens, median of 5 {med:.3f} s, "
              f"{len(data) / med / 1e6:.2f} MB/s, {n / med:.0f} tokens/s (encode_ordinary, 1 thread)")
    else:
        texts = {"torture": torture()}
        if a.kjv:
            texts["kjv"] = first_lines(open(a.kjv, "rb").read(), 4096)
        if a.shakespeare:
            texts["shakespeare"] = first_lines(open(a.shakespeare, "rb").read(), 4096)
        os.makedirs(a.fixtures, exist_ok=True)
        with open(os.path.join(a.fixtures, "bpe_torture.txt"), "wb") as f:
            f.write(texts["torture"])
        for name, data in texts.items():
            ids = encode(enc, ranks, data)
            with open(os.path.join(a.fixtures, f"bpe_{name}.ids"), "w") as f:
                for i in range(0, len(ids), 16):
                    f.write(" ".join(map(str, ids[i:i + 16])) + "\n")
            print(f"bpe_oracle.py: {name}: {len(data)} bytes, {len(ids)} tokens")


def tiktoken_version():
    import tiktoken
    return tiktoken.__version__


if __name__ == "__main__":
    main()
