"""Front end: score a file of comments against rules, here or on a Ray cluster."""
