"""SavedModel export for TF Serving, and prediction from exports or `.keras` files. Needs TensorFlow."""
