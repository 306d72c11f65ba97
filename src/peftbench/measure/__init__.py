"""What a method costs, measured: memory windows, timing, latency, the merge check, serving costs."""
