"""Jacobian backends: autodiff (MJX jacfwd) and finite_diff (native MuJoCo)."""

#: the classes of a certificate (``certify``), in the order of their integer codes in a dataset's
#: ``check_class`` variable (-1: not checked). Here, not in ``certify``, so that ``dataset`` can
#: name them without importing JAX.
CHECK_CLASSES = ("certified", "kink", "native-differs", "wrong")
