"""Side-by-side benchmarks of AutoRealNVP and Pyro's guides; ``accuracy.py`` is the runner."""
