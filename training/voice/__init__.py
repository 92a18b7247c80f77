"""Voice training: from the enrolment cache to an acoustic model."""
