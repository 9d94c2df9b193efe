"""anatomist: see and shape what DPO will teach; keep RL rollouts fast."""

__version__ = "0.1.0"
