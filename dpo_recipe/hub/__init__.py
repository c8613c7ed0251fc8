"""The Hugging Face Hub's write side: ``publish`` pushes adapters, exports and datasets, the last step (its read
side, which every stage may use, is ``dpo_recipe.utils.hub``)."""
