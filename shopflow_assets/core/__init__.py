"""What every feature shares: the daily partitions, the retry policy, a run's days and tags."""
