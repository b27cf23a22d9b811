"""Data handling: image/disparity I/O (`data.io`), demo data (`data.demo`), scene synthesis and loaders."""
