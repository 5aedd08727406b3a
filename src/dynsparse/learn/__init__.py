"""Learnability (Q4): do MLP world models trained on the same transitions recover the sparsity of
the true dynamics, with and without Jacobian losses? ``data`` (transitions, episode split,
normalisation), ``model`` (network, losses, training), ``evaluate`` (test metrics), ``run``
(the comparison behind ``dynsparse learn``; its box plots are drawn by
``dynsparse.render.learn_figures``)."""
