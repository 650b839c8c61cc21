"""aevb: Auto-Encoding Variational Bayes (Kingma & Welling 2013), reproduced."""

__version__ = "0.1.0"
