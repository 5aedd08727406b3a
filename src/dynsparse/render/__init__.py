"""Renderers: figures (matplotlib) and HTML pages drawn from results.

A library, not a stage: the analysis folder's figures and ``index.html``, the ``learn`` folder's
box plots and the cross-environment report (``dynsparse.report``) are all drawn with it. It
reads metric records and typed summaries (``dynsparse.results``) and imports no stage, so every
stage that writes a folder may use it without an import pointing back up the pipeline.
"""
