"""xray_keras: from-scratch vs pretrained models for pneumonia detection on chest X-rays."""

from xray_keras import console as _console

__version__ = "0.1.0"

_console.configure_command()  # before any command can import TensorFlow
