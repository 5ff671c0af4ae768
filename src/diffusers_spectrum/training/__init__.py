"""Training: data streams, objectives, checkpoint/resume/EMA helpers and one loop module per trainer."""
