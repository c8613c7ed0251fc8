"""On-policy pairs: the policy's own answers sampled (``sampling``), judged and made into pairs (``pairing``), for
``dpo-recipe pairs sample`` / ``pairs judge`` and the rounds of ``dpo-recipe iterate``."""
