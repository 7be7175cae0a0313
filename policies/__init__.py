"""Learners, networks, experts and exporters."""
