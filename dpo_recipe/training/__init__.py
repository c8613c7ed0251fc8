"""One DPO run: the packed trainer and its losses, packing, the base cache, callbacks, the run directory, launch,
the dry run, and the recipe → TRL / PEFT argument tables."""
