"""workflow-cache: workflow steps that run once and are remembered."""
