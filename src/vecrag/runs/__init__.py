"""The run directory: its layout, its lock, how a run starts and resumes, and how a trained run is loaded."""
