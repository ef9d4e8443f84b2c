"""Write recipes/data/math_word_problems.jsonl: arithmetic word problems with verifiable integer
answers, for step-level (process) supervision recipes.

    python recipes/data/make_math_word_problems.py            # rewrites the file (deterministic)
    python recipes/data/make_math_word_problems.py --check    # exit 1 if the file is out of date

Columns: prompt (the problem and the answer format to use), reference (a worked solution with
numbered steps "Step 1: ..." ending in "The answer is \\boxed{N}.", which filters/math_answer.py
reads), answer (the integer N). Nine templates, each drawn with wide number ranges from one
seeded generator, so the file is byte-identical on every run.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Callable
from pathlib import Path

OUT = Path(__file__).with_name("math_word_problems.jsonl")
SEED = 20240611
PER_TEMPLATE = 28
FORMAT = (' Solve it step by step: write each step on its own line as "Step 1: ...", "Step 2: ...", '
          'and end with "The answer is N." where N is the final number.')
NAMES = ["Maya", "Liam", "Ana", "Kofi", "Yuki", "Omar", "Priya", "Lena", "Mateo", "Sara", "Ivan", "Chen"]
Problem = tuple[str, list[str], int]


def shopping(r: random.Random) -> Problem:
    name, price, count = r.choice(NAMES), r.randint(2, 95), r.randint(3, 40)
    cost = price * count
    bill = (cost // 100 + 1) * 100 + r.choice([0, 100, 400])
    return (f"A store sells notebooks for ${price} each. {name} buys {count} notebooks and pays with ${bill}. "
            "How many dollars of change does "
            f"{name} get back?",
            [f"The notebooks cost {price} × {count} = {cost} dollars.",
             f"The change is {bill} - {cost} = {bill - cost} dollars."], bill - cost)


def trip(r: random.Random) -> Problem:
    a, b, c, d = r.randint(30, 140), r.randint(2, 9), r.randint(20, 120), r.randint(1, 8)
    return (f"A train travels at {a} km per hour for {b} hours, then at {c} km per hour for {d} hours. "
            "How many kilometres does it travel in total?",
            [f"In the first part it travels {a} × {b} = {a * b} km.",
             f"In the second part it travels {c} × {d} = {c * d} km.",
             f"In total it travels {a * b} + {c * d} = {a * b + c * d} km."], a * b + c * d)


def cookies(r: random.Random) -> Problem:
    trays, per, friends = r.randint(3, 25), r.randint(6, 48), r.randint(2, 12)
    total = trays * per
    kept = total % friends + friends * r.randint(0, max(0, total // friends - 2) // 3)
    each = (total - kept) // friends
    return (f"A baker makes {trays} trays of {per} cookies each. She keeps {kept} cookies and shares the rest "
            f"equally among {friends} friends. How many cookies does each friend get?",
            [f"She makes {trays} × {per} = {total} cookies.",
             f"After keeping {kept}, {total} - {kept} = {total - kept} cookies are left.",
             f"Each friend gets {total - kept} / {friends} = {each} cookies."], each)


def savings(r: random.Random) -> Problem:
    name, weekly, weeks = r.choice(NAMES), r.randint(5, 250), r.randint(4, 52)
    saved = weekly * weeks
    spent = r.randint(1, saved - 1)
    return (f"{name} saves ${weekly} every week for {weeks} weeks, then spends ${spent} on a bike. "
            "How many dollars are left?",
            [f"{name} saves {weekly} × {weeks} = {saved} dollars.",
             f"After the bike, {saved} - {spent} = {saved - spent} dollars are left."], saved - spent)


def fence(r: random.Random) -> Problem:
    length, width, price = r.randint(5, 300), r.randint(3, 200), r.randint(2, 60)
    perimeter = 2 * (length + width)
    return (f"A rectangular field is {length} m long and {width} m wide. Fencing costs ${price} per metre. "
            "How many dollars does it cost to fence the whole field?",
            [f"The perimeter is 2 × ({length} + {width}) = {perimeter} m.",
             f"The fence costs {perimeter} × {price} = {perimeter * price} dollars."], perimeter * price)


def ages(r: random.Random) -> Problem:
    name, age, times, later = r.choice(NAMES), r.randint(2, 30), r.randint(2, 4), r.randint(1, 40)
    return (f"{name} is {age} years old. {name}'s grandmother is {times} times as old. "
            f"How old will the grandmother be in {later} years?",
            [f"The grandmother is {age} × {times} = {age * times} years old now.",
             f"In {later} years she will be {age * times} + {later} = {age * times + later} years old."],
            age * times + later)


def discount(r: random.Random) -> Problem:
    pct = r.choice([5, 10, 15, 20, 25, 30, 40, 50, 60, 75])
    price = 20 * r.randint(2, 250)
    off = price * pct // 100
    return (f"A jacket costs ${price}. It is on sale for {pct}% off. What is the sale price in dollars?",
            [f"The discount is {price} × {pct} / 100 = {off} dollars.",
             f"The sale price is {price} - {off} = {price - off} dollars."], price - off)


def factory(r: random.Random) -> Problem:
    rate, machines, hours, broken = r.randint(12, 400), r.randint(2, 30), r.randint(2, 24), r.randint(1, 50)
    per_hour = rate * machines
    total = per_hour * hours
    return (f"A factory has {machines} machines and each makes {rate} bolts per hour. After {hours} hours, "
            f"{broken} bolts are thrown away as faulty. How many good bolts are there?",
            [f"Per hour the machines make {rate} × {machines} = {per_hour} bolts.",
             f"In {hours} hours they make {per_hour} × {hours} = {total} bolts.",
             f"The good bolts are {total} - {broken} = {total - broken}."], total - broken)


def consecutive(r: random.Random) -> Problem:
    n = r.randint(-40, 900)
    s = 3 * n + 3
    return (f"The sum of three consecutive integers is {s}. What is the largest of them?",
            [f"Call the smallest n; then n + (n + 1) + (n + 2) = 3n + 3 = {s}.",
             f"So 3n = {s} - 3 = {s - 3}, and n = {s - 3} / 3 = {n}.",
             f"The largest is {n} + 2 = {n + 2}."], n + 2)


TEMPLATES: list[Callable[[random.Random], Problem]] = [shopping, trip, cookies, savings, fence, ages, discount,
                                                       factory, consecutive]


def build() -> list[dict]:
    r = random.Random(SEED)
    rows, seen = [], set()
    for make in TEMPLATES:
        made = 0
        while made < PER_TEMPLATE:
            text, steps, answer = make(r)
            if text in seen:
                continue
            seen.add(text)
            lines = [f"Step {i}: {s}" for i, s in enumerate(steps, 1)]
            lines[-1] += f" The answer is \\boxed{{{answer}}}."
            rows.append({"prompt": text + FORMAT, "reference": "\n".join(lines), "answer": answer})
            made += 1
    return rows


def render(rows: list[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if the file differs from what this script writes")
    a = ap.parse_args(argv)
    text = render(build())
    if a.check:
        ok = OUT.is_file() and OUT.read_text(encoding="utf-8") == text
        print(f"{OUT}: {'up to date' if ok else 'OUT OF DATE; rerun without --check'}")
        return 0 if ok else 1
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {len(text.splitlines())} problems to {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
