"""Data sources, patient-grouped splits, the decode cache and the training feeder."""
