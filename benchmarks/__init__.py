"""Page harnesses for the documentation's benchmarks: kept out of the installed package."""
