"""The deltastore command line."""
