"""Figures and HTML reports built from metric results."""
