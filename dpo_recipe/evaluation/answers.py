"""Greedy answers from a tuned model, for people to read beside the numbers.

Reward accuracy says whether the adapter prefers the chosen answers; reading what it writes says
whether that preference shows. ``dpo-recipe chat`` (``api.chat``) and the held-out report's
base-versus-tuned table both answer prompts here, greedily, so the same prompt gives the same text.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dpo_recipe.training.base_cache import BaseCache


def prompt_text(tokenizer: Any, prompt: str | list[dict[str, str]]) -> str:
    """A prompt as training showed it to the model: plain text as is, messages through the chat template.

    TRL tokenizes a plain-text prompt raw (no template), so answering a bare question in the same
    form is what the adapter learned; conversational data was rendered with the template.
    """
    from dpo_recipe.data.tokens import render_text

    return render_text(tokenizer, prompt, generation_prompt=True)


def turn_end_ids(tokenizer: Any) -> list[int]:
    """EOS, plus the token that closes an assistant turn in the chat template (Gemma's ``<end_of_turn>``).

    A chat model ends its answer with the turn marker it was trained on, which is often not EOS;
    without stopping there, generation runs on into an imagined next turn.
    """
    stop = [tokenizer.eos_token_id]
    if tokenizer.chat_template:
        marker = "\u2063ANSWER\u2063"  # an invisible separator no template adds by itself
        turn = [{"role": "user", "content": "?"}, {"role": "assistant", "content": marker}]
        rendered = tokenizer.apply_chat_template(turn, tokenize=False)
        tail = rendered.split(marker, 1)[-1].strip() if marker in rendered else ""
        ids = tokenizer(tail, add_special_tokens=False)["input_ids"] if tail else []
        if ids and ids[0] in tokenizer.added_tokens_decoder and ids[0] not in stop:  # a marker, not a stray "<"
            stop.append(ids[0])
    return stop


def greedy_answer(
    model: Any,
    tokenizer: Any,
    text: str,
    max_new_tokens: int,
    *,
    repetition_penalty: float = 1.0,
    no_repeat_ngram_size: int = 0,
) -> str:
    """The model's greedy (deterministic) continuation of ``text``, without the prompt.

    ``repetition_penalty`` and ``no_repeat_ngram_size`` are transformers' own decoding options: a
    model this small loops under pure greedy decoding, and these are what keeps it from doing so.
    The penalty counts the answer's tokens only, not the question's (``greedy_batch``).
    """
    decoding = {"repetition_penalty": repetition_penalty, "no_repeat_ngram_size": no_repeat_ngram_size}
    return greedy_batch(model, tokenizer, [text], max_new_tokens, **decoding)[0]


def greedy_batch(model: Any, tokenizer: Any, texts: list[str], max_new_tokens: int, **decoding: Any) -> list[str]:
    """``greedy_answer`` for several prompts in one ``generate`` call, left-padded (``decoding``: ``greedy_ids``').

    Decoding one token costs about the same for one prompt as for twelve on a CPU (the weights and
    the LM head are read once a step either way), so the held-out answers are generated together.
    """
    return decoded(tokenizer, greedy_ids(model, tokenizer, texts, max_new_tokens, **decoding))


def decoded(tokenizer: Any, answers: list[list[int]]) -> list[str]:
    """Generated token ids as the text a reader sees (special tokens and the padding after a stop left out)."""
    return [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in answers]


def greedy_ids(
    model: Any,
    tokenizer: Any,
    texts: list[str],
    max_new_tokens: int,
    *,
    repetition_penalty: float = 1.0,
    no_repeat_ngram_size: int = 0,
) -> list[list[int]]:
    """The token ids ``greedy_batch`` generates for each prompt, before decoding: what the base cache keeps,
    so that a change to the tokenizer's decoder changes the text read back."""
    from transformers import LogitsProcessorList, RepetitionPenaltyLogitsProcessor

    settings: dict[str, Any] = {"do_sample": False, "no_repeat_ngram_size": no_repeat_ngram_size}
    if repetition_penalty != 1.0:
        # transformers' processor, counting only the answer's tokens: a penalty on the question's own words
        # made the model shorten the topic it was asked about (「主成分分析」 -> 「主成分とは」)
        width = max(len(ids) for ids in prompt_ids(tokenizer, texts))
        penalty = RepetitionPenaltyLogitsProcessor(repetition_penalty, prompt_ignore_length=width)
        settings["logits_processor"] = LogitsProcessorList([penalty])
    return generated_ids(model, tokenizer, texts, max_new_tokens, **settings)


def sampled_batch(
    model: Any,
    tokenizer: Any,
    texts: list[str],
    max_new_tokens: int,
    *,
    num_return_sequences: int,
    temperature: float,
    top_p: float,
) -> list[list[str]]:
    """``num_return_sequences`` sampled answers to each prompt, in one ``generate`` call: the policy's own answers
    for on-policy pairs (``onpolicy.sampling``). The caller seeds torch's generator. Pure temperature and top-p
    sampling (top-k off, no repetition penalty): what the policy writes, loops included, is what gets judged.

    An answer cut by ``max_new_tokens`` inside a character's bytes ends in U+FFFD; that broken tail is dropped (the
    answer still counts as cut off). Broken characters inside an answer are the model's own and are kept."""
    from transformers import LogitsProcessorList

    # transformers' own temperature and top-p are off (1.0): NucleusSampling computes both, in the same order
    nucleus = LogitsProcessorList([NucleusSampling(temperature, top_p)])
    settings = {"do_sample": True, "temperature": 1.0, "top_p": 1.0, "top_k": 0, "logits_processor": nucleus}
    ids = generated_ids(model, tokenizer, texts, max_new_tokens, num_return_sequences=num_return_sequences, **settings)
    answers = [text.rstrip("\ufffd").rstrip() for text in decoded(tokenizer, ids)]
    return [answers[i : i + num_return_sequences] for i in range(0, len(answers), num_return_sequences)]


class NucleusSampling:
    """Temperature, then top-p (nucleus) filtering: the scores transformers' ``TemperatureLogitsWarper`` and
    ``TopPLogitsWarper`` give, without sorting the whole vocabulary at every generated token.

    ``TopPLogitsWarper`` sorts all of a row's scores; on Gemma 3's 262,144-word vocabulary that sort was 45 % of
    sampling time on a 2-core CPU (py-spy over ``dpo-recipe iterate``'s sampling). The nucleus, the fewest top
    tokens whose probability reaches ``top_p``, is nearly always among the few hundred most likely, so this takes
    the ``candidates`` largest scores (``topk``, a selection, not a sort), their probabilities under the whole
    row's softmax, and keeps a candidate while the mass above it is below ``top_p``. A row whose candidates
    hold less than ``top_p`` of the mass (a flat distribution) goes through ``TopPLogitsWarper`` itself.
    ``tests/evaluation/test_answers.py`` holds it to transformers' two warpers, score for score, and to
    ``generate``'s own sampling, token for token. The two sum the mass in different orders, so a token whose mass
    above it equals ``top_p`` to the last bit may fall on the other side of the boundary (and of equal scores,
    which stay is each sort's own choice)."""

    def __init__(self, temperature: float, top_p: float, candidates: int = 1024) -> None:
        from transformers import TopPLogitsWarper

        self.temperature, self.top_p, self.candidates = temperature, top_p, candidates
        self.whole_vocabulary = TopPLogitsWarper(top_p) if top_p < 1.0 else None  # for a flat row

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        scores = scores / self.temperature
        if self.top_p >= 1.0:
            return scores
        top, index = scores.topk(min(self.candidates, scores.shape[-1]), dim=-1)  # largest first
        probs = (top - scores.logsumexp(-1, keepdim=True)).exp()
        above = probs.cumsum(-1) - probs  # the mass of the candidates more likely than each
        keep = above < self.top_p
        keep[:, 0] = True  # transformers keeps at least one token
        filtered = torch.full_like(scores, -float("inf")).scatter_(-1, index, top.masked_fill(~keep, -float("inf")))
        flat = (above[:, -1] + probs[:, -1]) < self.top_p  # the nucleus reaches past the candidates
        if flat.any():
            filtered[flat] = self.whole_vocabulary(input_ids[flat], scores[flat])
        return filtered


def generated_ids(
    model: Any, tokenizer: Any, texts: list[str], max_new_tokens: int, **settings: Any
) -> list[list[int]]:
    """The ids ``generate`` writes after each left-padded prompt (``settings``: its decoding options), stopping at
    EOS or the template's turn end; with ``num_return_sequences`` n, each prompt's n answers in a row."""
    import torch

    encoded, pad_id = prompt_ids(tokenizer, texts), padding_id(tokenizer)
    width = max(len(ids) for ids in encoded)
    input_ids = torch.tensor([[pad_id] * (width - len(ids)) + ids for ids in encoded])
    attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in encoded])
    settings = {
        "max_new_tokens": max_new_tokens,
        "pad_token_id": pad_id,
        "eos_token_id": turn_end_ids(tokenizer),
        **settings,
    }
    with torch.no_grad():
        output = model.generate(
            input_ids=input_ids.to(model.device), attention_mask=attention_mask.to(model.device), **settings
        )
    return [row[width:].tolist() for row in output]


def prompt_ids(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Each prompt's token ids as ``generate`` is given them.

    A rendered chat prompt already holds its BOS; plain text gets the tokenizer's specials, as in training.
    """
    return [tokenizer(text, add_special_tokens=not _starts_with_bos(tokenizer, text))["input_ids"] for text in texts]


def padding_id(tokenizer: Any) -> int:
    """The id a batch is left-padded with: the tokenizer's pad token, else EOS."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _starts_with_bos(tokenizer: Any, text: str) -> bool:
    return bool(tokenizer.bos_token) and text.startswith(tokenizer.bos_token)


def greedy_answers(
    model: Any,
    tokenizer: Any,
    rows: list[dict[str, Any]],
    max_new_tokens: int,
    cache: BaseCache | None = None,
    **decoding: Any,
) -> list[dict[str, str]]:
    """Each row's prompt answered by the base (adapter off) and the tuned model: ``prompt``, ``base``, ``tuned``.

    The base's answers are the same every run on that base: ``cache`` keeps them. Call it inside the
    autocast the model's forward runs in (the key records it).
    """
    from dpo_recipe.training.base_cache import BaseCache

    model.eval()
    cache = cache or BaseCache(None)
    texts = [prompt_text(tokenizer, row["prompt"]) for row in rows]
    tuned = greedy_batch(model, tokenizer, texts, max_new_tokens, **decoding)
    generation_config = model.get_base_model().generation_config.to_diff_dict()
    for given in ("transformers_version", "pad_token_id", "eos_token_id"):  # the call passes pad and stop ids
        generation_config.pop(given, None)
    key = cache.key(  # what generate is given, not the prompt strings: a tokenizer edit must miss
        model,
        prompt_ids(tokenizer, texts),
        pad=padding_id(tokenizer),
        stop=turn_end_ids(tokenizer),
        generation_config=generation_config,
        max_new_tokens=max_new_tokens,
        **decoding,
    )
    base_ids = cache.read_answers(key, len(texts))
    if base_ids is None:
        with model.disable_adapter():
            base_ids = greedy_ids(model, tokenizer, texts, max_new_tokens, **decoding)
        cache.write_answers(key, base_ids)
    base = decoded(tokenizer, base_ids)
    return [{"prompt": text, "base": b, "tuned": t} for text, b, t in zip(texts, base, tuned, strict=True)]
