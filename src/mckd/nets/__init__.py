"""Concrete encoders and decoders."""
