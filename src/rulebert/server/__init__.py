"""Front end: the HTTP API and web page, with its guard, request schema and state."""
