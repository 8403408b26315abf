"""Handlers: pure functions from a decoded image and params to outputs and facts."""
