"""Using an edited model: generating text with it, exporting it, editing from a file of facts."""
