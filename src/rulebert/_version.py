"""The package version, in one place (``rulebert --version``, the API's ``version``, model dir records)."""

__version__ = "0.1.0"
