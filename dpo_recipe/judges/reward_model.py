"""``reward-model:PATH_OR_ID``: a sequence-classification reward model (``AutoModelForSequenceClassification``) with
one output, the score of a whole conversation, as TRL's reward trainer writes them and its GRPO / online DPO
trainers read them.

The model's config is read first: a model of several labels is a classifier (sentiment, toxicity classes), not a
reward model, and its first logit is no score; it is refused before any weights load. Each answer is scored
with its prompt the way TRL's ``GRPOTrainer`` scores one: through the reward model's own chat template when it
has one (the prompt's turns, then the answer as the assistant's), else prompt text followed by the answer.
The model's own code never runs (``trust_remote_code`` stays off).
"""

from __future__ import annotations

from typing import Any

from dpo_recipe.config.schema import JudgeSection
from dpo_recipe.errors import JudgeError
from dpo_recipe.judges.base import ScoringJudge, Verdict

MAX_TOKENS = 2048  # an answer and its prompt past this are cut from the end, as a reward model's context ends


def checked_config(where: str) -> Any:
    """The reward model's config, refused (JudgeError) when it cannot be read or has more than one label."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(where)
    except (OSError, ValueError) as exc:
        raise JudgeError(
            f"--judge reward-model:{where}: no model config could be read ({str(exc).splitlines()[0]}). Give a "
            "directory or Hub id of a sequence-classification reward model."
        ) from None
    causal = [name for name in (config.architectures or []) if name.endswith("ForCausalLM")]
    if causal:
        raise JudgeError(
            f"--judge reward-model:{where}: the model is a causal language model ({causal[0]}), not a reward model: "
            "it writes text, it does not score it. Give a sequence-classification reward model with one output "
            "(num_labels 1), as TRL's RewardTrainer trains them, or --judge implicit to score by an adapter's own "
            "reward."
        )
    if config.num_labels != 1:
        labels = ", ".join(str(v) for v in (config.id2label or {}).values()) or "unnamed"
        raise JudgeError(
            f"--judge reward-model:{where}: the model has {config.num_labels} labels ({labels}): a classifier, "
            "not a reward model, whose first logit would be taken for a score. Give a reward model with one "
            "output (num_labels 1), as TRL's RewardTrainer trains them."
        )
    return config


class RewardModelJudge(ScoringJudge):
    def __init__(self, where: str, settings: JudgeSection) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.spec, self.settings = f"reward-model:{where}", settings
        checked_config(where)
        self.tokenizer = AutoTokenizer.from_pretrained(where)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForSequenceClassification.from_pretrained(where).eval()
        if self.model.config.pad_token_id is None:  # the score is read at each row's last real token
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.summary: dict[str, Any] = {"model": where}

    def text(self, prompt: Any, answer: str) -> str:
        """Prompt and answer as the reward model reads them (its chat template, else plain text)."""
        if self.tokenizer.chat_template:
            turns = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
            turns.append({"role": "assistant", "content": answer})
            return self.tokenizer.apply_chat_template(turns, tokenize=False)
        if isinstance(prompt, str):
            return prompt + answer
        return "\n".join(str(m.get("content", "")) for m in prompt) + "\n" + answer

    def verdicts(self, prompts: list[Any], completions: list[str], columns: dict[str, list[Any]]) -> list[Verdict]:
        import torch

        texts = [self.text(p, c) for p, c in zip(prompts, completions, strict=True)]
        scores: list[float] = []
        size = self.settings.batch_size
        for start in range(0, len(texts), size):
            batch = self.tokenizer(
                texts[start : start + size],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=MAX_TOKENS,
                add_special_tokens=False,
            )
            with torch.no_grad():
                scores += self.model(**batch).logits[:, 0].float().tolist()
        return [Verdict(round(s, 6), f"reward model score {s:+.4f}") for s in scores]
