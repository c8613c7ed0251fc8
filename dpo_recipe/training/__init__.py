"""One DPO run: the packed trainer and its losses, packing, the base cache, callbacks, the run directory, launch,
sweeps, preflight checks, and the artifacts a finished run leaves."""
