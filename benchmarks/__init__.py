"""Speed, parity and quality measurements, run as scripts: python benchmarks/NAME.py (see README.md)."""
