"""Evaluation on frozen features: a sharded feature cache (`cache`), what an encoder gives
(`features`), and the runner that extracts once and runs every protocol (`runner`)."""
