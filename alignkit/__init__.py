"""alignkit: align and unlearn language models with preference-style objectives on Ray Train + DeepSpeed."""
__version__ = "0.1.0"
