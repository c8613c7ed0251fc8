"""The words a recipe is checked against: objectives, loss names, data forms, chat roles, mixture keys.

Torch-free on purpose: ``dpo-recipe recipes show``, ``data lint`` and a recipe's validation read these
names without importing torch (``training.losses`` computes the losses under the same names).
"""

from __future__ import annotations

import difflib
import re
import urllib.parse
from collections.abc import Sequence
from typing import Any

# data.form: how rows hold a pair (dpo_recipe.data.forms)
DATA_FORMS = ("auto", "standard", "implicit", "hh", "ranked", "sharegpt", "openai", "unpaired", "completion", "chat")


CHAT_ROLES = ("system", "user", "assistant")  # the roles of TRL's conversational form, what data.roles maps onto


# data.sources entries: where and how one source's rows are read, plus how many of them the mixture takes
SOURCE_KEYS = ("source", "split", "weight", "fraction")


PER_SOURCE_KEYS = (
    "form",
    "prompt_column",
    "chosen_column",
    "rejected_column",
    "system_column",
    "roles",
    "ranked_column",
    "ranked_text_field",
    "ranked_score_field",
    "ranked_better",
    "ranked_pairs",
    "ranked_margin",
    "revision",
)


# judge.kind / --judge: how answers are scored or compared (dpo_recipe.judges); the last two take ":WHERE"
JUDGE_KINDS = ("rules", "implicit", "reward-model", "openai")
# judge.rules: the answer checks (evaluation.answer_checks) the rules judge weighs into its soft score
RULE_WEIGHTS = ("japanese_share", "names_topic", "repetition", "ends_sentence", "length")
# judge.gates: what a chosen answer must pass, whatever the judge (the published iterative methods' filters)
GATES = ("japanese", "no_loop", "ends_sentence", "length")


def redacted(text: str) -> str:
    """``text`` as a message may show it: what a URL carries before its last ``@`` (``user:secret@``) and from a
    ``?`` or ``#`` on (``?api_key=...``) masked. Every message that quotes a judge spec quotes it through this."""
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "", text
    if "@" in rest:
        rest = "[hidden]@" + rest.rpartition("@")[2]
    return scheme + sep + re.sub(r"[?#].*", "?[hidden]", rest, flags=re.DOTALL)


def split_judge_spec(spec: str) -> tuple[str, str | None]:
    """``judge.kind`` / ``--judge`` as ``(kind, where)``: ``rules`` -> ("rules", None), ``openai:URL`` -> ("openai",
    URL). Raises ValueError with the problem, phrased to follow the value.

    An ``openai:`` URL holding credentials (``user:secret@``, ``?api_key=``) is refused rather than masked: the
    spec is the run's record of its judge (``recipe.yaml``, ``iterate.json``, the pairs file, the rounds table and
    card, progress lines), so masking it everywhere would leave a recipe that no longer names its endpoint and a
    leak at each new place that shows it; the key has its own way in, ``judge.api_key_env``."""
    kind, sep, where = spec.strip().partition(":")
    if kind not in JUDGE_KINDS:
        known = "rules, implicit, reward-model:PATH_OR_ID, openai:URL"
        raise ValueError(f"unknown judge {redacted(spec)!r}; known: {known}{suggest(kind, JUDGE_KINDS)}")
    needs_where = kind in ("reward-model", "openai")
    if needs_where and not where.strip():
        raise ValueError(f"{kind} needs where it is: {kind}:{'PATH_OR_ID' if kind == 'reward-model' else 'URL'}")
    if not needs_where and sep:
        raise ValueError(f"{kind} takes nothing after it (got {redacted(spec)!r})")
    where = where.strip()
    if kind == "openai" and not where.startswith(("http://", "https://")):
        raise ValueError(f"openai:URL needs an http:// or https:// URL, got {redacted(where)!r}")
    if kind == "openai" and any(mark in where for mark in "@?#"):
        raise ValueError(
            f"openai:URL {redacted(where)!r} carries credentials or a query (user:password@ before the host, or "
            "?... / #... after the path), which would be shown in progress lines and errors and written into "
            "recipe.yaml and the pairs file. Give the bare endpoint (e.g. openai:https://host/v1), put the key in "
            "an environment variable and name that variable in judge.api_key_env (sent as a Bearer token, never "
            "printed or written)"
        )
    if kind == "openai":
        _check_endpoint(where)
    return kind, where if needs_where else None


def _check_endpoint(url: str) -> None:
    """What urllib would only find when the first answer is asked (after the sampling): no host, a port that is
    no number, spaces or control characters (a header's worth after a line break)."""
    problem = ""
    if any(c.isspace() or not c.isprintable() for c in url):
        problem = "it holds spaces or control characters"
    else:
        try:
            parts = urllib.parse.urlsplit(url)
            parts.port  # noqa: B018 - urlsplit checks the port only when it is read
        except ValueError as exc:
            problem = str(exc)
        else:
            problem = "" if parts.hostname else "it names no host"
    if problem:
        raise ValueError(
            f"openai:URL {redacted(url)!r} is not a URL the judge can ask ({problem}); give it as "
            "http(s)://HOST[:PORT]/PATH, e.g. openai:http://127.0.0.1:8080/v1"
        )


# iterate.reference: the DPO reference of round k >= 1
ROUND_REFERENCES = ("first_model", "last_policy")


def suggest(name: str, choices: Any) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


# TRL 1.16's loss types, in the order of its documentation; training.losses computes each under its name.
PAIRWISE_LOSS_NAMES = (
    "sigmoid",
    "hinge",
    "ipo",
    "exo_pair",
    "nca_pair",
    "robust",
    "bco_pair",
    "sppo_hard",
    "aot",
    "aot_unpaired",
    "apo_zero",
    "apo_down",
    "discopop",
    "sft",
    "sigmoid_norm",
)
# training.objective: dpo trains pairs with the loss_type losses below; kto trains unpaired rows with TRL's
# KTOTrainer, whose loss_type is its own name, not one of these; sft trains completions with TRL's SFTTrainer
# (dpo_recipe.training.objectives)
OBJECTIVES = ("dpo", "kto", "sft")
# What an objective owns: the defaults its recipe keys take where they differ from DPO's. A key the recipe or
# --set names keeps its value (and is checked); KTO has no packed path, so packing defaults to false under it.
OBJECTIVE_DEFAULTS: dict[str, dict[str, Any]] = {"kto": {"packing": False}, "sft": {"packing": False}}
# The keys of the DPO path an objective trained by a TRL trainer of padded rows does not read. A recipe file that
# sets them and names that objective is refused (config.checks); a DPO recipe switched to it by --set (or a
# stage's set:) keeps working: its DPO keys are left out, with a note (config.loader).
DPO_PATH_KEYS = (
    "training.loss_type",
    "training.loss_weights",
    "training.label_smoothing",
    "training.simpo_gamma",
    "training.cpo_alpha",
    "training.packing",
    "lora.token_learning_rate",
)
NOT_READ_BY: dict[str, tuple[str, ...]] = {"kto": DPO_PATH_KEYS, "sft": (*DPO_PATH_KEYS, "training.beta")}
KTO_LOSS_NAMES = ("sigmoid", "kto")  # training.loss_type under kto: its default (left unset) or KTO's own name

# Objectives without a reference model: no reference pass runs for them, and each trains alone.
REFERENCE_FREE_LOSS_NAMES = ("simpo", "orpo")
LOSS_NAMES = PAIRWISE_LOSS_NAMES + REFERENCE_FREE_LOSS_NAMES


def is_reference_free(names: Sequence[str]) -> bool:
    """Whether the objective named by ``loss_type`` needs no reference log-probs."""
    return any(name in REFERENCE_FREE_LOSS_NAMES for name in names)


def mixing_problem(names: Sequence[str]) -> str | None:
    """Why ``names`` cannot be trained together (a reference-free loss beside any other), or None."""
    free = [name for name in names if name in REFERENCE_FREE_LOSS_NAMES]
    if free and len(names) > 1:
        return (
            f"{free[0]} is reference-free (no reference pass runs for it) and trains alone; got {list(names)}. "
            f"Name one of {', '.join(REFERENCE_FREE_LOSS_NAMES)} alone, or only reference-based losses"
        )
    return None


# training.early_stopping: its keys, and the held-out metrics it may watch, each with whether higher is better
EARLY_STOPPING_KEYS = ("patience", "metric")
EARLY_STOPPING_METRICS = {"loss": False, "reward_accuracy": True, "reward_margin": True}


# training.report_to: the trackers transformers' integrations log to (each one's package), and "none"
TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio"}
REPORT_TO = (*TRACKERS, "none")
