"""dynsparse: how sparse are the true dynamics of robotic RL environments?"""

__version__ = "0.1.0"
