"""Jacobian backends: autodiff (MJX jacfwd) and finite_diff (native MuJoCo)."""
