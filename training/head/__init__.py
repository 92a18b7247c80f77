"""Talking-head training: enrolment cache in, generator and sync expert weights out."""
