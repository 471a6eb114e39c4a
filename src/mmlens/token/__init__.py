"""Model perspective / token: visual token importance and pruning."""
