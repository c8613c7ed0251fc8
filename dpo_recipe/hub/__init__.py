"""The Hugging Face Hub: ``client`` reads (status, retries, tokens, recipes) and is a leaf every stage may use;
``publish`` pushes adapters, exports and datasets (the last step)."""
