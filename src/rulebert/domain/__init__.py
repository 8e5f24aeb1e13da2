"""The domain, without torch: competition data, model input text, metrics, calibration, a rule's examples and
rules as data."""
