"""The demo's measurement: held-out answer NLL (and accuracy) of a model on the math task.

A tiny Llama with the zoo's byte-level tokenizer is fine-tuned for a few real steps with the
same ``finetune`` the demo uses, and the demo's own scoring function must find the fine-tune
better than its base on held-out problems it never trained on.
"""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from deltastore.demo import gain_kept, score_dir  # noqa: E402
from deltastore.zoo import tasks  # noqa: E402
from deltastore.zoo.finetune import finetune  # noqa: E402
from deltastore.zoo.tiny import tiny_llama_dir, tiny_tokenizer  # noqa: E402


def test_tiny_tokenizer_round_trips_and_formats_the_task():
    tok = tiny_tokenizer()
    text = "Anna has 12 apples.\n3 + 4 = 7. Answer: 7 é"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    p = tasks.math_heldout(1)[0]
    prompt = tasks.math_prompt(tok, p)
    assert p.question in prompt and prompt.endswith("<assistant>")
    ids, plen = tasks.math_example(tok, p)
    assert tok.decode(ids[plen:]) == p.solution + tok.eos_token


def test_finetune_scores_better_than_base_on_heldout(tmp_path):
    base = tiny_llama_dir(tmp_path / "base", dtype=torch.float32, tokenizer=True, max_positions=512, seed=0)
    ft = tmp_path / "ft"
    train = finetune(base, ft, task="math", steps=8, batch_size=4, seq_len=512, lr=3e-3, seed=0)
    assert train["loss_last"] < train["loss_first"]
    problems = tasks.math_heldout(12)
    assert not {p.question for p in problems} & {p.question for p in tasks.math_train(8 * 4)}
    sb = score_dir(base, problems, accuracy=True, max_new_tokens=4)
    sf = score_dir(ft, problems, accuracy=True, max_new_tokens=4)
    assert sb["n"] == sf["n"] == 12
    assert 0.0 <= sb["accuracy"] <= 1.0 and sb["correct"] == round(sb["accuracy"] * 12)
    # a random 264-token model is near ln(264) = 5.58 nats; a few steps must clearly lower it
    assert abs(sb["answer_nll"] - math.log(264)) < 0.5
    assert sf["answer_nll"] < sb["answer_nll"] - 0.5, (sb, sf)
    # scoring is deterministic: the same weights give the same figure
    assert score_dir(ft, problems, accuracy=False)["answer_nll"] == pytest.approx(sf["answer_nll"], rel=1e-6)


def test_gain_kept():
    assert gain_kept(2.0, 1.0, 1.0) == 1.0
    assert gain_kept(2.0, 1.0, 2.0) == 0.0
    assert gain_kept(2.0, 1.0, 1.1) == pytest.approx(0.9)
    assert gain_kept(1.0, 1.0, 0.5) is None  # no gain to keep


def test_generation_stops_only_once_the_scored_answer_is_fixed() -> None:
    """eval_math stops a row when its text holds a complete first ``Answer: N``: any text that
    follows cannot change what extract_answer reads, so the score equals generating to the limit
    (measured on the demo's fine-tune: the same 48 answers, 2.5x less time)."""
    from hypothesis import given, settings, strategies as st

    from deltastore.zoo.tasks import _ANS_DONE_RE, extract_answer

    @settings(max_examples=300, deadline=None)
    @given(st.text(max_size=40), st.text(alphabet="0123456789,-: Answer$x.\n", max_size=40))
    def check(head: str, tail: str) -> None:
        text = head + tail
        for cut in range(len(text) + 1):
            if _ANS_DONE_RE.search(text[:cut]):
                assert extract_answer(text[:cut]) == extract_answer(text), (text, cut)
                break

    check()
    assert _ANS_DONE_RE.search("so Answer: 17.") and not _ANS_DONE_RE.search("so Answer: 17")
    assert not _ANS_DONE_RE.search("so Answer: 1,7")  # the integer may still grow
