"""One TrainConfig in, one run folder out: the loop, its steps, checkpoints, distributed training."""
