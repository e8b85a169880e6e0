"""retain: pretrain shared modules once, tune them onto tasks, and measure what the tuning cost."""

__version__ = "0.1.0"
