"""First-party evaluation protocols: kNN, linear probe grid, attentive probe, low-shot, RankMe."""
