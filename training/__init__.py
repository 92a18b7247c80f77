"""twincast enrolment: footage in, enrolment cache and avatar bundle out."""
