"""The names TRL's DPOTrainer logs its reward metrics under, written down once.

The packed trainer logs under these names so that its logs read like TRL's; the progress bar,
the charts and ``metrics.json`` read them back. A typo in any one of those places would not
fail: the metric would just be missing. Importing the names from here makes it an error.
"""

from __future__ import annotations

REWARD_CHOSEN = "rewards/chosen"  # beta * (policy - reference) log-prob of chosen (simpo/orpo: mean log-prob)
REWARD_REJECTED = "rewards/rejected"
REWARD_ACCURACY = "rewards/accuracies"  # share of pairs whose chosen reward is strictly higher
REWARD_MARGIN = "rewards/margins"  # chosen reward - rejected reward, batch mean
LOGPS_CHOSEN = "logps/chosen"  # summed completion log-prob under the policy, batch mean
LOGPS_REJECTED = "logps/rejected"
REWARD_KEYS = (REWARD_ACCURACY, REWARD_MARGIN, REWARD_CHOSEN, REWARD_REJECTED, LOGPS_CHOSEN, LOGPS_REJECTED)
EVAL_PREFIX = "eval_"  # the Trainer's prefix for held-out metrics: "eval_rewards/accuracies"
