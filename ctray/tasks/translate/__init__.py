"""Report translation (CT-RATE-JPN method) and translation-quality evaluation."""
