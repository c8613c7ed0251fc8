"""The base model: loading (Hub id, directory, GGUF), what this machine can run, the tiny test model, adapters,
trainable token rows, chat templates."""
