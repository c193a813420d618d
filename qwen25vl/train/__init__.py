"""Training: losses, the packed forward, optimizer groups, schedules, distributed wrapping, checkpoint state."""
