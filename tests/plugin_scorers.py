"""User scorers that the CLI tests load by dotted path (copied into each test's work folder)."""

import math


def length(prompt, completion):
    return float(len(completion))


def explode(prompt, completion):
    raise ValueError("boom")


def not_a_number(prompt, completion):
    return "high"


class DropsOne:
    """A batch scorer that returns one score too few."""

    name = "drops_one"

    def score(self, prompts, completions, metadata):
        return [1.0] * (len(prompts) - 1)


def non_finite(prompt, completion, answer):
    """Prompt 0: NaN for every sample; prompt 1: +inf for every sample; the others: the length."""
    return {"0": math.nan, "1": math.inf}.get(answer, float(len(completion)))


def even_length(prompt, completion):
    """1 for a completion of even length, else 0: a checker that a random tiny model passes about half the time."""
    return float(len(completion) % 2 == 0)
