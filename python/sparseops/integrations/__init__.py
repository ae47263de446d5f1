"""Integrations with other libraries (imported on demand: `import sparseops.integrations.hf`)."""
