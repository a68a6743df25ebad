"""Inference engines behind one interface; each returns ``rlstack.types.Completion``."""
