"""EMOCA reimplemented as a batch pipeline."""
