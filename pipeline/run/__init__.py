"""Run control: the job driver, the resource plan, exactly-once resume state, run counters and cluster submission."""
