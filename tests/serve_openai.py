"""serve_openai.py: drives `glia serve` with the official openai Python client
(PyPI `openai`), as test_serve.c's serve::openai_python_client runs it.

usage: serve_openai.py PORT WANT_FILE TEXT EVAL_LOSS
  WANT_FILE  the engine's completion of "the astrocyte " (20 tokens, T 0.8, seed 42)
  TEXT       a text whose echoed logprobs must average to EVAL_LOSS, the loss
             `glia eval` reports for it
Checks: models.list() names glia; a completion and a stream give the
engine's text; echo + logprobs + max_tokens 0 (lm-evaluation-harness's
loglikelihood request) give the prompt's tokens, the first without a
logprob, the rest averaging to glia eval's loss. Exits non-zero on the first
mismatch, saying which.
"""
import sys

import openai

port, want_file, text, eval_loss = int(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4])
want = open(want_file, encoding="utf-8").read()
client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=30)

ids = [m.id for m in client.models.list()]
assert "glia" in ids, f"models.list() gave {ids}"

c = client.completions.create(model="glia", prompt="the astrocyte ", max_tokens=20, temperature=0.8, seed=42)
assert c.choices[0].text == want, f"completion {c.choices[0].text!r} != engine {want!r}"
assert c.usage.completion_tokens == 20, c.usage

pieces = []
for ev in client.completions.create(model="glia", prompt="the astrocyte ", max_tokens=20, temperature=0.8, seed=42,
                                    stream=True):
    pieces.append(ev.choices[0].text)
assert "".join(pieces) == want, f"stream {''.join(pieces)!r} != engine {want!r}"

r = client.completions.create(model="glia", prompt=text, max_tokens=0, echo=True, logprobs=1, temperature=0)
ch = r.choices[0]
assert ch.text == text, f"echo gave {ch.text!r}"
lp = ch.logprobs
assert len(lp.tokens) == len(text) and "".join(lp.tokens) == text, lp.tokens
assert lp.token_logprobs[0] is None, lp.token_logprobs[:2]
mean = -sum(lp.token_logprobs[1:]) / (len(text) - 1)
assert abs(mean - eval_loss) < 2e-4, f"mean -logprob {mean:.5f} != glia eval loss {eval_loss:.4f}"
assert all(len(t) == 1 for t in lp.top_logprobs[1:]), lp.top_logprobs[:3]
# lm-evaluation-harness's local-completions loglikelihood request, as it sends it:
# a batch of prompts, max_tokens 1, echo, logprobs 1; it sums token_logprobs[ctxlen:-1]
# and calls the continuation greedy when each is the best of its top_logprobs.
ctx, cont = text[:20], text[20:]
r = client.completions.create(model="glia", prompt=[ctx + cont, ctx + cont], max_tokens=1, echo=True, logprobs=1,
                              temperature=0, seed=1234)
assert [c.index for c in r.choices] == [0, 1], r.choices
for c in r.choices:
    tl, top = c.logprobs.token_logprobs, c.logprobs.top_logprobs
    assert len(tl) == len(text) + 1, len(tl)
    ll = sum(tl[len(ctx):-1])
    assert abs(ll - sum(lp.token_logprobs[len(ctx):])) < 1e-4, (ll, sum(lp.token_logprobs[len(ctx):]))
    assert tl[-1] == max(top[-1].values()), "the greedy generated token is not the best of its alternatives"
print(f"serve_openai: ok (openai {openai.__version__}; echo logprobs mean {mean:.5f}, glia eval {eval_loss:.4f})")
