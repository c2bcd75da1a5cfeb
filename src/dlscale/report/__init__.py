"""Turning measurements into pictures: plots (matplotlib) and a self-contained HTML report."""
