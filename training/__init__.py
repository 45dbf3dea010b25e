"""DUPN multi-task model, task weighting, Petastorm data path and the training loop."""
