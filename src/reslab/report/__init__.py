"""Reports: tables and figures of runs and comparisons."""
