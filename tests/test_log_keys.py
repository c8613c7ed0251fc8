"""The key names written down in log_keys are the ones TRL's DPOTrainer really logs under."""

import inspect

from dpo_recipe.log_keys import REWARD_KEYS


def test_every_reward_key_is_logged_by_trl_under_that_name() -> None:
    from trl import DPOTrainer

    source = inspect.getsource(DPOTrainer)
    for key in REWARD_KEYS:
        assert f'["{key}"]' in source, key  # self._metrics[mode]["rewards/chosen"].append(...)
    assert len(set(REWARD_KEYS)) == len(REWARD_KEYS) == 6
