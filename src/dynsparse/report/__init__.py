"""The report stage: analysis (and ``learn``) folders -> one self-contained HTML report with the
cross-environment table (``build``). Drawing is ``dynsparse.render``'s."""
