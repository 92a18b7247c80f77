"""A synthetic presenter that a fresh machine can enrol from without any download."""
