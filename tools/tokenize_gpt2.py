#!/usr/bin/env python3
"""tokenize_gpt2.py: a text file into GPT-2 BPE token shards for glia.

    python3 tools/tokenize_gpt2.py --in FILE.txt --out DIR [--val-frac 0.1] [--name NAME]

writes DIR/NAME_train.bin (the first 1 - val-frac of the tokens) and
DIR/NAME_val.bin (the rest) in llm.c's shard format, the one glia reads
(host/data.h): a header of 256 little-endian int32 (magic 20240520, version 1,
token count, zeros), then the tokens as uint16 (GPT-2's 50257 ids fit). NAME
defaults to FILE's name without its extension. This is the BPE counterpart of
`glia prepare`, which makes byte-level shards (V = 256) without Python.

Why it is built this way. The tokenizer is tiktoken's "gpt2" encoding, the
one llm.c uses, so shards made here and by llm.c's scripts are
interchangeable; like llm.c, the text is treated as one document and starts
with GPT-2's <|endoftext|> token (50256). The split is by position, computed
as floor(n * (1 - val_frac)) in double precision exactly as glia's C code
does, so val is one held-out stretch at the end of the text. Each shard is
written to a temporary file in DIR, fsynced and renamed into place, so an
existing shard is replaced whole or not at all.

Network: tiktoken downloads the GPT-2 vocabulary (vocab.bpe, encoder.json)
the first time the encoding is used and caches it in $TIKTOKEN_CACHE_DIR
(default: data-gym-cache in the system temp directory). On a machine without
network access, run this once where there is network, copy that cache
directory over and point TIKTOKEN_CACHE_DIR at it; otherwise the script stops
with an error saying so. glia itself never downloads anything.

Needs: pip install tiktoken. Exit status: 0 done, 2 bad flags or bad input,
1 the encoding could not be loaded or a shard could not be written.
"""
import argparse
import math
import os
import sys
import tempfile
from array import array

SHARD_MAGIC = 20240520
SHARD_VERSION = 1
SHARD_HEADER_INTS = 256
MAX_SHARD_TOKENS = 2**31 - 1  # the count is an int32 in the header

PROG = "tokenize_gpt2.py"


class InputError(Exception):
    """The user's input is unusable (exit status 2)."""


def fail(status, msg):
    print(f"{PROG}: {msg}", file=sys.stderr)
    sys.exit(status)


def write_shard(path, tokens):
    """Write `tokens` (ints in [0, 65535]) as a shard, atomically.

    The data goes to a temporary file next to `path`, is fsynced, and is
    renamed over `path`; the directory is fsynced so the rename is durable.
    On any failure the temporary file is removed and `path` is untouched.
    Raises ValueError for tokens a shard cannot hold, OSError on I/O errors.
    """
    n = len(tokens)
    if not 2 <= n <= MAX_SHARD_TOKENS:
        raise ValueError(f"{path}: cannot write a shard of {n} tokens (a shard holds 2 to {MAX_SHARD_TOKENS})")
    data = array("H")
    try:
        data.extend(tokens)  # OverflowError for anything outside uint16
    except OverflowError:
        bad = next(t for t in tokens if not 0 <= t <= 0xFFFF)
        raise ValueError(f"{path}: token {bad} does not fit in uint16") from None
    header = array("i", [SHARD_MAGIC, SHARD_VERSION, n] + [0] * (SHARD_HEADER_INTS - 3))
    assert header.itemsize == 4 and data.itemsize == 2
    if sys.byteorder != "little":
        header.byteswap()
        data.byteswap()

    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=os.path.basename(path) + ".tmp.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(header.tobytes())
            f.write(data.tobytes())
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    except OSError:
        pass  # some file systems cannot fsync a directory
    finally:
        os.close(dfd)


def split_tokens(tokens, val_frac):
    """(train, val): the first floor(n * (1 - val_frac)) tokens and the rest."""
    n = len(tokens)
    ntrain = min(n, int(math.floor(n * (1.0 - val_frac))))
    train, val = tokens[:ntrain], tokens[ntrain:]
    if len(train) < 2 or len(val) < 2:
        raise InputError(
            f"text of {n} tokens is too short: a validation fraction of {val_frac:g} leaves "
            f"{len(train)} train and {len(val)} val tokens, and each split needs at least 2")
    return train, val


def load_gpt2():
    try:
        import tiktoken
    except ImportError:
        fail(1, "tiktoken is not installed (pip install tiktoken)")
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as e:  # requests' ConnectionError, a bad cache file, ...
        cache = os.environ.get("TIKTOKEN_CACHE_DIR") or os.path.join(tempfile.gettempdir(), "data-gym-cache")
        fail(1, f"cannot load tiktoken's GPT-2 encoding ({type(e).__name__}): tiktoken downloads it "
                f"the first time, which needs network access; without network, copy a tiktoken cache "
                f"that holds it and set TIKTOKEN_CACHE_DIR to it (looked in {cache})")


def main(argv=None):
    ap = argparse.ArgumentParser(prog=PROG, description="Turn a text file into GPT-2 BPE token shards for glia.")
    ap.add_argument("--in", dest="inp", required=True, metavar="FILE", help="the text (UTF-8)")
    ap.add_argument("--out", required=True, metavar="DIR", help="where to write the shards (created if needed)")
    ap.add_argument("--name", metavar="NAME", help="shard name prefix (default: FILE's name without extension)")
    ap.add_argument("--val-frac", type=float, default=0.1, metavar="F",
                    help="fraction of the tokens (the end) kept for validation (default 0.1)")
    args = ap.parse_args(argv)  # exits with status 2 on bad flags

    if not 0.0 < args.val_frac < 1.0:
        fail(2, f"--val-frac: {args.val_frac:g} must be strictly between 0 and 1")
    name = args.name if args.name is not None else os.path.splitext(os.path.basename(args.inp))[0]
    if not name or "/" in name:
        fail(2, f"--name: '{name}' must be non-empty and contain no '/'")
    try:
        with open(args.inp, "r", encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        fail(2, f"{args.inp}: not UTF-8 text: {e}")
    except OSError as e:
        fail(2, f"{args.inp}: cannot read: {e.strerror or e}")

    enc = load_gpt2()
    tokens = [enc.eot_token] + enc.encode_ordinary(text)
    try:
        train, val = split_tokens(tokens, args.val_frac)
    except InputError as e:
        fail(2, f"{args.inp}: {e}")

    paths = {s: os.path.join(args.out, f"{name}_{s}.bin") for s in ("train", "val")}
    try:
        os.makedirs(args.out, exist_ok=True)
        write_shard(paths["train"], train)
        write_shard(paths["val"], val)
    except (OSError, ValueError) as e:
        fail(1, str(e) if isinstance(e, ValueError) else f"{e.filename or args.out}: {e.strerror or e}")
    for split, toks in (("train", train), ("val", val)):
        print(f"{PROG}: {split:<5} {len(toks):10d} tokens  {paths[split]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
