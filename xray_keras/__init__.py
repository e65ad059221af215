"""xray_keras: from-scratch vs pretrained models for pneumonia detection on chest X-rays."""

__version__ = "0.1.0"
