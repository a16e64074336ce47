"""The `byol-search` command and the page for searching and labelling."""
