"""ctray: Ray-distributed batch processing for radiology reports and CT volumes."""

__version__ = "0.1.0"
