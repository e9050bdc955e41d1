"""R-Zero prompts, quoted exactly from the reference (the authors' code), as data.

The Challenger always gets the same (system, user) pair; the Solver's user turn is the question.
Build chat messages here and render them with the tokenizer's chat template; a tokenizer without
a template falls back to `format_without_template`, the reference's plain "system: / user:" form.
"""

from __future__ import annotations

import dataclasses

CHALLENGER_SYSTEM_PROMPT = (
    'You are an expert competition-math problem setter.\n'
    'FIRST, in your private scratch-pad, think step-by-step to design a brand-new, '
    'non-trivial problem. The problem could come from any field of mathematics, including '
    'but not limited to algebra, geometry, number theory, combinatorics, prealgebra, '
    'probability, statistics, and calculus. Aim for a difficulty such that fewer than 30 % '
    'of advanced high-school students could solve it. Avoid re-using textbook clichés or '
    'famous contest problems.\n'
    'THEN, without revealing any of your private thoughts, output **exactly** the following '
    'two blocks:\n'
    '\n'
    '<question>\n'
    '{The full problem statement on one or more lines}\n'
    '</question>\n'
    '\n'
    '\\boxed{final_answer}\n'
    '\n'
    'Do NOT output anything else—no explanations, no extra markup.'
)

CHALLENGER_USER_PROMPT = (
    "Generate one new, challenging reasoning question now. "
    "Remember to format the output exactly as instructed."
)

SOLVER_SYSTEM_PROMPT = 'Please reason step by step, and put your final answer within \\boxed{}.'

Message = dict[str, str]


@dataclasses.dataclass(frozen=True)
class PromptSet:
    """The role prompts of one setting, as data. The paper's set is the default; a synthetic
    world brings its own (a tiny model's context cannot afford the competition-math prompt)."""

    challenger_system: str
    challenger_user: str
    solver_system: str

    def challenger_messages(self) -> list[Message]:
        """The one Challenger prompt: every Challenger rollout starts from this pair."""
        return [
            {"role": "system", "content": self.challenger_system},
            {"role": "user", "content": self.challenger_user},
        ]

    def solver_messages(self, question: str) -> list[Message]:
        """The Solver prompt for one question (training, pseudo-labelling and evaluation)."""
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"question must be a non-empty string, got {question!r:.80}")
        return [
            {"role": "system", "content": self.solver_system},
            {"role": "user", "content": question},
        ]


PAPER = PromptSet(CHALLENGER_SYSTEM_PROMPT, CHALLENGER_USER_PROMPT, SOLVER_SYSTEM_PROMPT)
PROMPT_SETS = ("paper", "arith")


def prompt_set(name: str) -> PromptSet:
    """The prompt set a config names: "paper" (docs/ALGORITHM.md, "Prompts") or a world's ("arith")."""
    if name == "paper":
        return PAPER
    if name == "arith":
        from rzero_jax.worlds import arith  # lazy: the world is optional
        return PromptSet(**dataclasses.asdict(arith.PROMPTS))
    raise ValueError(f"prompt set {name!r} is unknown; expected one of {PROMPT_SETS}")


def challenger_messages() -> list[Message]:
    """The paper's Challenger prompt."""
    return PAPER.challenger_messages()


def solver_messages(question: str) -> list[Message]:
    """The paper's Solver prompt for one question."""
    return PAPER.solver_messages(question)


def format_without_template(messages: list[Message]) -> str:
    """The reference's fallback for tokenizers without a chat template: system, newline, user."""
    roles = [m.get("role") for m in messages]
    if roles != ["system", "user"]:
        raise ValueError(f"expected [system, user] messages, got roles {roles}")
    return "system: " + messages[0]["content"] + "\nuser: " + messages[1]["content"]
