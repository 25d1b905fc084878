"""Training machinery: the loop, optimizer and schedules, checkpoints and resume, distributed setup."""
