"""bench.py's measuring tools (measure.py) and model groups (models.py); run them through bench.py."""
