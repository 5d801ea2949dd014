"""Recipes: `train-base` and `finetune`."""
