"""Training, evaluation and threshold calibration for the learned difficulty classifier."""
