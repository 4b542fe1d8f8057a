"""ImageMaskNet: breast-ultrasound classification with lesion masks."""

__version__ = "0.1.0"
