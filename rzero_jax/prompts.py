"""Role prompts as data, and the plain chat format (a leaf module: it imports nothing of ours).

The paper's prompts are quoted exactly from the authors' code. The Challenger always gets the
same (system, user) pair; the Solver's user turn is the question. Build chat messages here and
render them with the tokenizer's chat template; a tokenizer without a template falls back to
`format_without_template`, the authors' plain "system: / user:" form, which
`PLAIN_CHAT_TEMPLATE` writes as a Jinja chat template for an exported tokenizer. A world's own
prompt set is looked up by name with `worlds.prompt_set`.
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


def challenger_messages() -> list[Message]:
  """The paper's Challenger prompt."""
  return PAPER.challenger_messages()


def solver_messages(question: str) -> list[Message]:
  """The paper's Solver prompt for one question."""
  return PAPER.solver_messages(question)


def format_without_template(messages: list[Message]) -> str:
  """The authors' fallback for tokenizers without a chat template: system, newline, user."""
  roles = [m.get("role") for m in messages]
  if roles != ["system", "user"]:
    raise ValueError(f"expected [system, user] messages, got roles {roles}")
  return "system: " + messages[0]["content"] + "\nuser: " + messages[1]["content"]


# `format_without_template` as a chat template, BOS first: without a template the prompt is
# encoded with the tokenizer's special tokens, and a chat template must write them itself.
PLAIN_CHAT_TEMPLATE = (
  "{% if messages | length != 2 or messages[0]['role'] != 'system' "
  "or messages[1]['role'] != 'user' %}"
  "{{ raise_exception('expected [system, user] messages') }}{% endif %}"
  "{% if bos_token %}{{ bos_token }}{% endif %}system: {{ messages[0]['content'] }}\nuser: {{ messages[1]['content'] }}"
)
