"""Trained models in other libraries' formats (``clipa export``) and back (``init: checkpoint:open_clip:DIR``)."""
