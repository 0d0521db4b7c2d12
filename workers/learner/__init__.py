"""The online learner: training loop, checkpoint and offset codec, model pipelines."""
